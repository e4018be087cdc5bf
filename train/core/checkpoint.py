"""The run's checkpoint file (RUN/checkpoints/last.pt, `rundir.CHECKPOINT`): written atomically, read back with one
sentence when it cannot be. What goes into it is the Trainer's business (train/core/trainer.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cdeit.common.atomic import atomic_path
from cdeit.common.errors import CdeitError
from cdeit.train.core.rundir import CHECKPOINT, io_error


def checkpoint_path(run: str | Path) -> Path:
    """Where a run directory keeps its checkpoint."""
    return Path(run) / CHECKPOINT


def save_checkpoint(run: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` atomically: a kill leaves the previous checkpoint whole."""
    path = checkpoint_path(run)
    try:
        with atomic_path(path, rerun="rerun with --resume") as tmp:
            torch.save(payload, tmp)
    except OSError as exc:
        raise io_error(path, exc) from None


def read_checkpoint(run: str | Path) -> dict[str, Any] | None:
    """The run's checkpoint payload (tensors on the CPU), None when it has none."""
    path = checkpoint_path(run)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CdeitError(
            f"checkpoint {path} could not be read ({type(exc).__name__}); delete it to start over."
        ) from None


def not_this_run(run: str | Path, exc: Exception) -> CdeitError:
    """The sentence for a checkpoint that does not fit the run being resumed (another model, not a checkpoint)."""
    first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else "mismatch"
    return CdeitError(
        f"checkpoint {checkpoint_path(run)} does not belong to this run ({type(exc).__name__}: {first}); "
        "resume with the run's own settings, or delete it to start over."
    )
