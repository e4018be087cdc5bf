"""An exponential moving average of the student's weights (`--model-ema`, `--model-ema-decay`), timm's `ModelEmaV3`.

Updated after every optimizer step with the step count (as timm's train.py: the first update copies the weights),
validated beside the model each epoch (its metrics in metrics.jsonl with the prefix `ema_`), kept in the
checkpoint and written at the end as `RUN/model_ema.safetensors`, a student file like `model.safetensors`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

EMA_FILE = "model_ema.safetensors"
PREFIX = "ema_"


class StudentEma:
    """timm's ModelEmaV3 of `model` (the raw student, not its compiled or DDP wrapper), which it keeps a reference
    to so that the engine's step can call `update(step)` alone."""

    def __init__(self, model: nn.Module, decay: float):
        from timm.utils import ModelEmaV3

        self.source = model
        self.ema = ModelEmaV3(model, decay=decay)
        self.ema.module.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged student, a model like the trained one (same class, config and heads)."""
        return self.ema.module

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the average towards the weights after optimizer step `step` (counted from 1)."""
        self.ema.update(self.source, step=step)

    def state_dict(self) -> dict[str, Any]:
        return self.ema.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema.module.load_state_dict(state)


def make_ema(enabled: bool, model: nn.Module, decay: float) -> StudentEma | None:
    """The run's EMA with --model-ema, None without."""
    return StudentEma(model, decay) if enabled else None


def ema_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The EMA's validation metrics under their metrics.jsonl names: val_acc -> ema_val_acc."""
    return {PREFIX + k: v for k, v in metrics.items()}
