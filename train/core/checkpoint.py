"""The run's checkpoint file (RUN/checkpoints/last.pt, `rundir.CHECKPOINT`): written atomically, read back with one
sentence when it cannot be. What goes into it is the Trainer's business (train/core/trainer.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from cdeit.common.atomic import atomic_path
from cdeit.common.errors import CdeitError
from cdeit.train.core.rundir import CHECKPOINT, io_error


def checkpoint_path(run: str | Path) -> Path:
    """Where a run directory keeps its checkpoint."""
    return Path(run) / CHECKPOINT


DIGEST = "sha256"  # the payload's own entry: sha256 over everything else in it (payload_digest)


def payload_digest(payload: Any) -> str:
    """sha256 over a checkpoint payload: every tensor's dtype, shape and bytes and every other value, in a fixed
    order, so a flipped bit anywhere in the saved state is seen on load (a field of the file: no second file to
    keep in step with it through a kill)."""
    digest = hashlib.sha256()
    _feed(digest, payload)
    return digest.hexdigest()


def _feed(digest: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            _feed(digest, value[key])
    elif isinstance(value, list | tuple):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"V{value!r}".encode())


def save_checkpoint(run: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` atomically, with its sha256 (DIGEST): a kill leaves the previous checkpoint whole."""
    path = checkpoint_path(run)
    payload = {k: v for k, v in payload.items() if k != DIGEST}
    payload[DIGEST] = payload_digest(payload)
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
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CdeitError(
            f"checkpoint {path} could not be read ({type(exc).__name__}); delete it to start over."
        ) from None
    if not isinstance(payload, dict):
        raise CdeitError(f"checkpoint {path} is not a cdeit checkpoint; delete it to start over.")
    want = payload.pop(DIGEST, None)  # checkpoints written before the digest existed carry none
    if want is not None and want != payload_digest(payload):
        raise CdeitError(
            f"checkpoint {path} is damaged: its content does not match its recorded {DIGEST}; restore it or delete it "
            "to start over."
        )
    return payload


def not_this_run(run: str | Path, exc: Exception) -> CdeitError:
    """The sentence for a checkpoint that does not fit the run being resumed (another model, not a checkpoint)."""
    first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else "mismatch"
    return CdeitError(
        f"checkpoint {checkpoint_path(run)} does not belong to this run ({type(exc).__name__}: {first}); "
        "resume with the run's own settings, or delete it to start over."
    )
