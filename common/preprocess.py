"""Device-side teacher input: 32px uint8 images upsampled and normalised as the teacher's timm data config says.

Nothing at the teacher's resolution is ever stored: each batch is resized on the device right before the forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cdeit.common.errors import CdeitError

if TYPE_CHECKING:
    import torch
    from torch import nn

MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest", "area": "area"}


@dataclass(frozen=True)
class Preprocessing:
    """How 32px images become teacher input: output size, interpolation, and the mean/std on a 0..1 scale."""

    input_size: tuple[int, int]  # (H, W)
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def attrs(self) -> dict[str, Any]:
        """The preprocessing as cache attributes (crop_pct is ignored: the whole 32px image is resized)."""
        return {
            "input_size": list(self.input_size),
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": "whole 32px image, align_corners=False, no antialias, clamped to 0..255 before normalising",
        }


def preprocessing_for(model: nn.Module) -> Preprocessing:
    """Read input size, interpolation, mean and std from timm's data config for `model`."""
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    interpolation = cfg.get("interpolation", "bicubic")
    if interpolation not in MODES:
        raise CdeitError(
            f"the teacher asks for {interpolation!r} interpolation, which cdeit cannot do on the device; "
            f"choose a teacher whose timm data config uses one of {', '.join(MODES)}."
        )
    _, h, w = cfg["input_size"]
    return Preprocessing((int(h), int(w)), interpolation, tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"])))


class DeviceResize:
    """uint8 (B, 3, 32, 32) -> float32 teacher input (B, 3, H, W) on the images' device."""

    def __init__(self, prep: Preprocessing, device: torch.device | str, channels_last: bool = False):
        import torch

        self.prep = prep
        self.channels_last = channels_last
        std = torch.tensor(prep.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean = torch.tensor(prep.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std)  # ((x / 255) - mean) / std == x * scale - shift
        self.shift = mean / std

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        mode = MODES[self.prep.interpolation]
        align = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        x = F.interpolate(images.float(), size=self.prep.input_size, mode=mode, antialias=False, **align)
        x = x.clamp_(0.0, 255.0)  # bicubic overshoots at sharp edges; a real photo never holds values past 0..255
        x = x.mul_(self.scale).sub_(self.shift)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
