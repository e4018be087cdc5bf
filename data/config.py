"""The options of `cdeit data prepare`: one dataclass, the only home of their names and defaults.

Kept apart from data/prepare.py (numpy, the readers) so that the command line reads the defaults without
importing the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from cdeit.common.dataset import CORRUPTIONS

PAPER_SIZES = (4500, 200, 200)  # images per class per type for train / val / test (paper 3.4)
SplitPolicy = Literal["grouped", "paper"]  # grouped: every variant of a photograph in one split; paper: random
SPLIT_POLICIES: tuple[str, ...] = get_args(SplitPolicy)
SourcePool = Literal["all", "train", "test"]  # all: CIFAR-10 train + test photographs pooled (the default)
SOURCE_POOLS: tuple[str, ...] = get_args(SourcePool)
SOURCE_OPTIONS = ("cifar10", "cifar100", "tiny_imagenet", "image_folder")  # exactly one names the photographs
CORRUPTED_SETS = {"cifar10": "cifar10c", "cifar100": "cifar100c", "tiny_imagenet": "tiny_imagenet_c"}


@dataclass
class PrepareConfig:
    """The options of `cdeit data prepare` (data/cli.py takes its defaults from here)."""

    out: Path  # the dataset directory to write
    cifar10: Path | None = None  # CIFAR-10 python version: `cifar-10-batches-py/` or its parent
    cifar10c: Path | None = None  # extracted CIFAR-10-C (or its parent); unused with generate
    cifar100: Path | None = None  # CIFAR-100 python version: `cifar-100-python/` or its parent
    cifar100c: Path | None = None  # extracted CIFAR-100-C (or its parent)
    tiny_imagenet: Path | None = None  # `tiny-imagenet-200/` or its parent
    tiny_imagenet_c: Path | None = None  # extracted Tiny-ImageNet-C (or its parent)
    image_folder: Path | None = None  # one folder per class (optionally under train/, val/, test/)
    image_size: int | None = None  # 32, 64 or 224: resize every image to it (docs/data.md, the resize rule)
    generate: bool = False  # make the ten corruptions with cdeit's own implementation
    per_class_per_type: tuple[int, int, int] = PAPER_SIZES
    split: SplitPolicy = "grouped"
    types: tuple[str, ...] = CORRUPTIONS  # image types to include, clean first
    seed: int = 0
    sources: SourcePool = "all"  # which CIFAR-10 photographs may be sources (docs/data.md)
    workers: int = 2  # processes for corruption generation and packing
