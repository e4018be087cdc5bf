"""The small, complete set of good inputs every bad-input case starts from (built once, then only copied).

A dataset and a second one of other images, CIFAR-10 in the official layout, a teacher cache of each
(timm's `test_vit`, random weights), a trained run, an exported model and a few images. Built in about
half a minute on 2 CPU cores; shared read-only by the whole suite.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}
SIZES = (64, 32, 32)  # train / val / test images of the tiny datasets
CACHE_OPTIONS = dict(teacher="test_vit", random_weights=True, batch_size=32, shard_size=32, head_epochs=2, workers=1)
CACHE_ARGS = ["--teacher", "test_vit", "--random-weights", "--batch-size", "32", "--shard-size", "32",
              "--head-epochs", "2", "--workers", "1", "--device", "cpu"]  # fmt: skip
TRAIN_ARGS = ["--student", "vit", "--distill", "none", "--epochs", "1", "--batch-size", "32", "--eval-batch-size",
              "32", "--workers", "1", "--device", "cpu", "--model-kwargs", json.dumps(TINY),
              "--warmup-epochs", "0"]  # fmt: skip


@dataclass(frozen=True)
class World:
    root: Path
    data: Path  # a dataset (SIZES)
    data2: Path  # the same counts, other images
    cifar: Path  # CIFAR-10 python layout (folder holding cifar-10-batches-py)
    cache: Path  # a complete teacher cache of `data`
    cache2: Path  # a complete teacher cache of `data2`
    run: Path  # a finished `cdeit train` run on `data` (vit, no distillation)
    model: Path  # the run exported to a .safetensors file (with its .json beside it)
    image: Path  # a small PNG
    readonly: Path | None  # an empty folder nobody can write (read-only tmpfs as root), or None
    full: Path | None  # a nearly full file system (a 16 KiB tmpfs as root), or None


def build_world(root: Path) -> World:
    """Build every good input under `root` (through the product's own functions)."""
    from PIL import Image

    from cdeit.data.synthetic import write_synthetic_cifar
    from cdeit.precompute.config import PrecomputeConfig
    from cdeit.precompute.run import precompute_teacher
    from cdeit.train.core.config import TrainConfig
    from cdeit.train.core.trainer import train
    from cdeit.train.use.deploy import export
    from tests.conftest import make_tiny_dataset

    root.mkdir(parents=True, exist_ok=True)
    data, data2 = make_tiny_dataset(root / "data", SIZES, seed=0), make_tiny_dataset(root / "data2", SIZES, seed=7)
    cifar = write_synthetic_cifar(root / "cifar", train_per_class=6, test_per_class=4, seed=0).parent
    for d, c in ((data, root / "cache"), (data2, root / "cache2")):
        precompute_teacher(PrecomputeConfig(data=d, out=c, device="cpu", **CACHE_OPTIONS))
    run = root / "run"
    train(TrainConfig(student="vit", distill="none", data=str(data), out=str(run), epochs=1, batch_size=32,
                      eval_batch_size=32, workers=1, device="cpu", model_kwargs=TINY, warmup_epochs=0))  # fmt: skip
    model, _ = export(run, root / "model.safetensors")
    image = root / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(image)
    return World(root, data, data2, cifar, root / "cache", root / "cache2", run, model, image, *_mounts(root))


def _mounts(root: Path) -> tuple[Path | None, Path | None]:
    """A read-only folder and a nearly full file system: tmpfs mounts as root, else a chmod'ed folder and None."""
    readonly, full = root / "readonly", root / "full"
    readonly.mkdir(exist_ok=True)
    full.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        readonly.chmod(0o555)
        return readonly, None
    ok_ro = _mount(["-o", "size=64k,ro"], readonly)
    ok_full = _mount(["-o", "size=16k"], full)
    return (readonly if ok_ro else None), (full if ok_full else None)


def _mount(options: list[str], where: Path) -> bool:
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", *options, "tmpfs", str(where)], capture_output=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def unmount(world: World) -> None:
    for where in (world.readonly, world.full):
        if where is not None and os.geteuid() == 0:
            subprocess.run(["umount", str(where)], capture_output=True, timeout=10)


@contextlib.contextmanager
def world_in(root: Path) -> Iterator[World]:
    world = build_world(root)
    try:
        yield world
    finally:
        unmount(world)
