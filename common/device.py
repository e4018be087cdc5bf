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
    except RuntimeError:
        raise CdeitError(f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CdeitError(f"--device {name} asks for CUDA but no CUDA device is visible; use --device cpu or auto.")
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device
