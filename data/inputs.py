"""What `cdeit data prepare` reads: one source of photographs and, for it, a released -C set or none.

The option checks of the sources live here (one sentence per conflict, before anything is read), and so does
the part of the recipe that names the inputs, so that prepare.py only plans and packs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cdeit.common.dataset import SPLITS
from cdeit.common.errors import CdeitError
from cdeit.data.config import CORRUPTED_SETS, SOURCE_OPTIONS, PrepareConfig
from cdeit.data.sources import Photographs

IMAGE_SIZES = (32, 64, 224)


def _flag(name: str) -> str:
    """The command-line option of a PrepareConfig field."""
    return "--" + name.replace("_", "-")


@dataclass
class Inputs:
    """The photographs, their released corruptions (None: generate) and what the recipe records of them."""

    photos: Photographs
    corrupted: dict[str, Any] | None  # name -> (5 * Ntest, S, S, 3) array-like, row (s - 1) * Ntest + i
    recorded: dict[str, Any]  # the recipe's `inputs`: per input, its checksums
    corruption_source: str  # "generate" or the -C set's option name ("cifar10c", ...)


def source_of(cfg: PrepareConfig) -> str:
    """The one source option that is set, or one sentence naming the conflict."""
    given = [name for name in SOURCE_OPTIONS if getattr(cfg, name) is not None]
    if len(given) != 1:
        choices = ", ".join(_flag(n) for n in SOURCE_OPTIONS)
        found = f"got {' and '.join(_flag(n) for n in given)}" if given else "got none"
        raise CdeitError(f"give exactly one source of photographs ({choices}); {found}.")
    return given[0]


def check_options(cfg: PrepareConfig) -> str:
    """Refuse conflicting options in one sentence each; return the source option's name."""
    source = source_of(cfg)
    corrupted_given = [c for c in CORRUPTED_SETS.values() if getattr(cfg, c) is not None]
    for c in corrupted_given:
        if CORRUPTED_SETS.get(source) != c:
            raise CdeitError(f"{_flag(c)} is the corruptions of another source than {_flag(source)}; drop it.")
    own = CORRUPTED_SETS.get(source)
    if source == "image_folder":  # no released corruptions exist for a folder: always generated
        cfg.generate = True
    elif cfg.generate == (own is not None and getattr(cfg, own) is not None):
        raise CdeitError(f"give exactly one of {_flag(own)} DIR or --corruptions generate.")  # type: ignore[arg-type]
    if cfg.image_size is not None and cfg.image_size not in IMAGE_SIZES:
        raise CdeitError(f"--image-size {cfg.image_size} is not one of {', '.join(map(str, IMAGE_SIZES))}.")
    native = {"cifar10": 32, "cifar100": 32, "tiny_imagenet": 64}.get(source)
    if cfg.image_size not in (None, native) and not cfg.generate:
        raise CdeitError(
            f"--image-size {cfg.image_size} differs from {_flag(own)}'s {native}px images; "  # type: ignore[arg-type]
            "use --corruptions generate to corrupt resized images."
        )
    if source == "image_folder" and cfg.sources != "all":
        raise CdeitError(f"--sources {cfg.sources} needs a CIFAR or Tiny-ImageNet source; drop it for --image-folder.")
    return source


def read_inputs(cfg: PrepareConfig, types: tuple[str, ...]) -> Inputs:
    """Read the source of `cfg` and its -C set (checked against it); every read error is one sentence."""
    source = check_options(cfg)
    names = [t for t in types if t != "clean"]
    path = getattr(cfg, source)
    photos = _read_source(source, path, cfg.image_size)
    if photos.origin is not None and cfg.split != "grouped":
        raise CdeitError(f"--split {cfg.split} draws a split, but {path} gives one (train/, val/); drop --split.")
    corrupted, sums = None, {}
    own = CORRUPTED_SETS.get(source)
    if not cfg.generate:
        corrupted, sums = _read_corrupted(source, getattr(cfg, own), names, photos, path)  # type: ignore[arg-type]
    key = "cifar10" if source == "cifar10" else source.replace("_", "-")
    recorded: dict[str, Any] = {key: photos.checksums}
    if source == "cifar10":  # a CIFAR-10 dataset records what it always recorded
        recorded["cifar10c"] = sums
    elif sums:
        recorded[own.replace("_", "-")] = sums  # type: ignore[union-attr]
    if cfg.image_size is not None:
        recorded["image_size"] = cfg.image_size
    return Inputs(photos, corrupted, recorded, "generate" if cfg.generate else own)  # type: ignore[arg-type]


def _read_source(source: str, path: Any, image_size: int | None) -> Photographs:
    if source == "cifar10":
        from cdeit.data.sources import read_cifar10 as reader
    elif source == "cifar100":
        from cdeit.data.cifar100 import read_cifar100 as reader
    elif source == "tiny_imagenet":
        from cdeit.data.tiny_imagenet import read_tiny_imagenet

        return read_tiny_imagenet(path, image_size)
    else:
        from cdeit.data.image_folder import read_image_folder

        return read_image_folder(path, image_size)
    photos = reader(path)
    if image_size is not None and image_size != photos.image_size:
        from cdeit.data.image_folder import fit_array, say_resized

        say_resized(len(photos.train_labels) + len(photos.test_labels), image_size, str(path))
        photos.train_images = fit_array(photos.train_images, image_size)
        photos.test_images = fit_array(photos.test_images, image_size)
    return photos


def _read_corrupted(source: str, path: Any, names: list[str], photos: Photographs, src_path: Any) -> tuple[Any, dict]:
    if source == "cifar10":
        from cdeit.data.sources import read_cifar10c

        return read_cifar10c(path, names, photos.test_labels)
    if source == "cifar100":
        from cdeit.data.cifar100 import read_cifar100c

        return read_cifar100c(path, names, photos.test_labels)
    from cdeit.data.tiny_imagenet import read_tiny_imagenet_c

    return read_tiny_imagenet_c(path, names, src_path)


def recipe(cfg: PrepareConfig, types: tuple[str, ...], inputs: Inputs) -> dict[str, Any]:
    """What defines the dataset: equal recipes give identical datasets (the workers count does not matter)."""
    wanted = {
        "split_policy": "given" if inputs.photos.origin is not None else cfg.split,  # given: the folder's own split
        "seed": cfg.seed,
        "corruption_source": inputs.corruption_source,
        "per_class_per_type": dict(zip(SPLITS, cfg.per_class_per_type, strict=True)),
        "types": list(types),
        "inputs": inputs.recorded,
    }
    return wanted | ({"source_pool": cfg.sources} if cfg.sources != "all" else {})  # absent: train + test pooled


def class_count(photos: Photographs) -> int:
    """How many classes the plan loops over: the class names, checked against the labels."""
    n = len(photos.class_names)
    _, labels, _ = photos.pooled()
    if labels.size and int(np.max(labels)) >= n:
        raise CdeitError(f"labels go up to {int(np.max(labels))} but the source names {n} classes.")
    return n
