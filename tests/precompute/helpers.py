"""The options of the reference run, shared by the precompute tests and the subprocess they start."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdeit.precompute.config import PrecomputeConfig

if TYPE_CHECKING:
    import torch

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


SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"  # a commit hash, as the hub names snapshots


def fake_hf_cache(root: Path, repo: str, model: torch.nn.Module) -> Path:
    """A Hugging Face hub cache holding `repo` at one snapshot: config.json + model.safetensors (timm's export)."""
    import timm.models

    folder = root / f"models--{repo.replace('/', '--')}"
    timm.models.save_for_hf(model, str(folder / "snapshots" / SNAPSHOT), safe_serialization=True)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(SNAPSHOT)
    return folder / "snapshots" / SNAPSHOT


def calibration_record(manifest: dict[str, Any], temperature: float) -> dict[str, Any]:
    """A valid `calibration` record of temperature `temperature` for the cache's head. The tiny test datasets' val
    splits are told apart without an error, so a real fit ends at the search bound and records none."""
    head = manifest.get("head") or {}
    figures = {"nll_before": 1.0, "nll_after": 0.9, "ece_before": 0.1, "ece_after": 0.05}
    count = manifest["splits"]["val"]["count"]
    return {"temperature": temperature, "count": count, **figures, "split": "val", "head_hash": head.get("hash")}
