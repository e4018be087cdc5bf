"""The options of `cdeit precompute-teacher`: one dataclass, the only home of their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cdeit.common.dataset import SPLITS
from cdeit.common.hub import DEFAULT_TEACHER


@dataclass
class PrecomputeConfig:
    """The options of `cdeit precompute-teacher`."""

    data: Path
    out: Path
    teacher: str = DEFAULT_TEACHER  # anything timm.create_model accepts (name, name.tag, hf-hub:, local-dir:)
    teacher_module: str | None = None  # FILE.py or package.module imported first: its @register_model teachers
    checkpoint: Path | None = None
    random_weights: bool = False
    head: str | None = None  # None: fit on the train features (paper 4.1); "none": the teacher's own; else a file
    batch_size: int | None = None  # None: 1024 on CUDA, 64 on CPU
    shard_size: int = 16384
    store_features: bool = False  # keep float16 features next to the logits in the final shards
    shard_index: int = 0
    num_shards: int = 1
    device: str = "auto"  # auto: cuda (cuda:LOCAL_RANK under torchrun) when available, else cpu
    seed: int = 0
    workers: int | None = None  # FFCV decoding threads; None: min(8, cores)
    head_epochs: int = 50
    head_lr: float = 5e-5  # paper 4.1; a random-weight teacher's features need a larger one
    head_standardize: bool = False  # z-score the features for the fit (folded into the head afterwards)
    splits: tuple[str, ...] = SPLITS
    view: str = "same"  # same: the teacher sees each sample (the paper); clean: each sample's clean source, once
    targets: tuple[str, ...] = ("logits",)  # and any of embedding, patches, attention (docs/asymmetric.md)
