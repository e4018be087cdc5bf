"""Device names to torch devices, the same way for every stage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdeit.common.errors import CdeitError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` is the local rank's GPU when CUDA is available, else the CPU; `cuda` means the local rank's GPU."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise CdeitError(f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise CdeitError(
                f"--device {name} asks for Apple's MPS, which this machine lacks; use --device cpu or auto."
            )
        return device
    if device.type not in ("cpu", "cuda"):
        raise CdeitError(
            f"--device {name!r} cannot run cdeit (it computes on cpu, cuda or mps); use auto, cpu or cuda."
        )
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CdeitError(f"--device {name} asks for CUDA but no CUDA device is visible; use --device cpu or auto.")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        if device.index >= torch.cuda.device_count():
            raise CdeitError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s).")
        torch.cuda.set_device(device)
    return device


def max_workers() -> int:
    """The most worker processes or threads a command accepts: four per core this process may use (at least 64),
    so a typo such as `--workers 99999` is refused in a sentence instead of forking until the machine stalls."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(64, 4 * cores)
