"""Writing a dataset directory (the contract of `common.dataset`): one FFCV `.beton` per split, the manifest last.

Each `.beton` is packed by FFCV's writer under a temporary name, watched so a dying writer process is one sentence
(data.watchdog), and renamed when complete; `manifest.json`, written last, marks the directory complete.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdeit.common.dataset import (
    CLASSES,
    DEFAULT_IMAGE_SIZE,
    INT_FIELDS,
    MANIFEST,
    SOURCES_FILE,
    beton_entry,
    beton_path,
    check_arrays,
    dataset_manifest,
)
from cdeit.data.corruption_params import params_for
from cdeit.data.watchdog import QuietBar, write_watched

if TYPE_CHECKING:
    import numpy as np


class _Samples:
    """Indexable view FFCV's writer iterates over: sample i as a tuple in FIELDS order."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.n = len(arrays["image"])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple:
        a = self.arrays
        return (a["image"][i], *(int(a[f][i]) for f in INT_FIELDS))


def write_beton(path: str | os.PathLike, arrays: dict[str, np.ndarray], workers: int = 1) -> None:
    """Pack one split into an FFCV `.beton`, written under a temporary name and renamed when complete."""
    import ffcv.writer
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    from cdeit.common.atomic import atomic_path

    check_arrays(arrays)
    fields = {"image": RGBImageField(write_mode="raw")} | {f: IntField() for f in INT_FIELDS}
    ffcv.writer.tqdm = QuietBar  # FFCV prints its own tqdm bar; the caller shows progress instead
    with atomic_path(path) as tmp:
        writer = DatasetWriter(str(tmp), fields, num_workers=max(1, workers))
        write_watched(writer, _Samples(arrays), Path(path))


def write_dataset(
    out_dir: str | os.PathLike,
    splits: dict[str, dict[str, np.ndarray]],
    meta: dict[str, Any],
    workers: int = 1,
    on_split: Callable[[], None] | None = None,
    sources: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Pack every split and write `manifest.json` last, so a directory with a manifest is complete.

    `meta` holds what the producer knows (split policy, seed, inputs, the class names as `classes`, CIFAR-10's
    if absent); counts, fingerprints and `image_size` are computed from the arrays themselves, so a source of any
    square size and class count writes a dataset every later stage reads at that size. `sources`, if given, is one
    clean image per source photograph used in the splits (`SOURCES_FILE`, for teachers that look at the clean
    view). Returns the manifest.
    """
    from cdeit.common.atomic import write_json

    out_dir = Path(out_dir)
    classes = list(meta.get("classes") or CLASSES)
    size = _image_size(splits, sources, len(classes))
    table = params_for(size)  # the corruption constants of this size (data/corruption_params.py), recorded
    meta = {"corruption_table": {"name": table.name, "image_size": table.image_size}} | meta
    meta |= {"classes": classes, "image_size": size}
    out_dir.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    for split, arrays in splits.items():
        path = beton_path(out_dir, split)
        write_beton(path, arrays, workers)
        entries[split] = beton_entry(path, arrays, num_classes=len(classes))
        if on_split:
            on_split()
    source_entry = None
    if sources is not None:
        write_beton(out_dir / SOURCES_FILE, sources, workers)
        source_entry = beton_entry(out_dir / SOURCES_FILE, sources, split=False)
    manifest = dataset_manifest(meta, entries, source_entry)
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def _image_size(splits: dict[str, dict[str, np.ndarray]], sources: dict[str, np.ndarray] | None, classes: int) -> int:
    """The one image side S of every split (and the source images), whose labels must all name one of the classes."""
    arrays = [*splits.values(), *([sources] if sources is not None else [])]
    sizes = {int(a["image"].shape[1]) for a in arrays if a["image"].ndim == 4 and len(a["image"])} or {
        DEFAULT_IMAGE_SIZE
    }
    if len(sizes) != 1:
        raise ValueError(f"every split must hold images of one size, got sides {sorted(sizes)}")
    for a in splits.values():
        if len(a["label"]) and not 0 <= int(a["label"].min()) <= int(a["label"].max()) < classes:
            low, high = a["label"].min(), a["label"].max()
            raise ValueError(f"labels must be 0..{classes - 1} (one per class name), got {low}..{high}")
    return sizes.pop()
