"""The options of the reference run, shared by the precompute tests and the subprocess they start."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cdeit.precompute.config import PrecomputeConfig

# 220/110/110 images in shards of 64 (two batches of 32): 4 + 2 + 2 shards, the last of each split ragged.
OPTIONS: dict[str, Any] = dict(
    teacher="test_vit", random_weights=True, batch_size=32, shard_size=64, head_epochs=3, store_features=True, workers=1
)
CLI_ARGS = [
    "--teacher", "test_vit", "--random-weights", "--batch-size", "32", "--shard-size", "64", "--head-epochs", "3",
    "--store-features", "--workers", "1",
]  # fmt: skip


def config(data: Path, out: Path, **over: Any) -> PrecomputeConfig:
    """The reference run's options for another output directory, with `over` changed."""
    return dataclasses.replace(PrecomputeConfig(data=data, out=out, **OPTIONS), **over)
