"""The optimizer of a run through timm's `create_optimizer_v2` (`--opt`, `--momentum`, `--lr`), and the checks of
the options that issue 23 added beside it (`--model-ema-decay`, `--grad-accum-steps`, `--aa`).

AdamW, the default, is built exactly as before timm chose it: the same two parameter groups (weight decay on
matrices only) in the same order, timm's defaults for betas and eps, fused on CUDA.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Protocol

import torch

from cdeit.common.errors import CdeitError
from cdeit.train.core.notes import quiet_library_messages


class OptimSettings(Protocol):
    """The TrainConfig fields read here (a Protocol: config.py imports this module, not the other way)."""

    opt: str
    momentum: float
    lr: float | None
    lr_per_512: float
    batch_size: int
    weight_decay: float
    model_ema_decay: float
    grad_accum_steps: int
    aa: str | None
    epochs: int
    warmup_epochs: float
    min_lr: float
    warmup_lr: float

    @property
    def peak_lr(self) -> float: ...


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: not on norms, biases, tokens or position embeddings."""
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The class timm's registry builds for `--opt name`, or one sentence naming --opt."""
    from timm.optim import list_optimizers
    from timm.optim._optim_factory import default_registry

    try:
        return default_registry.get_optimizer_info(name.lower().split("_")[-1]).opt_class
    except (ValueError, KeyError):
        known = ", ".join(n for n in ("adamw", "sgd", "momentum", "adam", "lamb", "lion") if n in list_optimizers())
        raise CdeitError(
            f"--opt {name!r} is not an optimizer of timm's create_optimizer_v2; use e.g. {known} "
            "(timm.optim.list_optimizers() names them all)."
        ) from None


def build_optimizer(groups: list[dict[str, Any]], cfg: OptimSettings, device: torch.device) -> torch.optim.Optimizer:
    """timm's `create_optimizer_v2` over the run's parameter groups (each keeps its weight decay), at the peak lr;
    fused on CUDA where the optimizer class has a fused kernel."""
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, Any] = {}
    if device.type == "cuda" and "fused" in inspect.signature(optimizer_class(cfg.opt)).parameters:
        kwargs["fused"] = True
    return create_optimizer_v2(
        groups, opt=cfg.opt, lr=cfg.peak_lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, **kwargs
    )


def check_training_options(cfg: OptimSettings) -> None:
    """One sentence per bad --opt, --momentum, --lr, --model-ema-decay, --grad-accum-steps or --aa value."""
    optimizer_class(cfg.opt)
    if not (_finite(cfg.momentum) and 0 <= cfg.momentum < 1):
        raise CdeitError(f"--momentum must be in [0, 1), not {cfg.momentum}.")
    if cfg.lr is not None:
        if not (_finite(cfg.lr) and cfg.lr > 0):
            raise CdeitError(f"--lr must be a positive learning rate (or left off), not {cfg.lr}.")
        default = {f.name: f.default for f in dataclasses.fields(cfg)}["lr_per_512"]  # type: ignore[arg-type]
        if cfg.lr_per_512 != default:
            raise CdeitError(
                f"--lr {cfg.lr:g} and --lr-per-512 {cfg.lr_per_512:g} both set the learning rate; give only one."
            )
    if not (_finite(cfg.model_ema_decay) and 0 < cfg.model_ema_decay < 1):
        raise CdeitError(f"--model-ema-decay must be in (0, 1), e.g. 0.9998, not {cfg.model_ema_decay}.")
    n = cfg.grad_accum_steps
    if not isinstance(n, int) or n < 1 or cfg.batch_size % n:
        raise CdeitError(
            f"--grad-accum-steps {n} must be a positive integer that divides --batch-size {cfg.batch_size} "
            "(each micro-batch is batch / N images)."
        )
    if cfg.aa is not None:
        check_aa(cfg.aa)


def randaugment_hparams(mean: tuple[float, ...], size: int) -> dict[str, Any]:
    """timm's own RandAugment hparams for an image size and mean (timm.data.transforms_factory's)."""
    return {"translate_const": int(size * 0.45), "img_mean": tuple(min(255, round(255 * m)) for m in mean)}


def check_aa(text: str) -> None:
    """--aa must be a RandAugment string timm parses (rand-m9-mstd0.5, rand-m9-n2, ...); else one sentence."""
    from timm.data import rand_augment_transform

    try:
        ok = isinstance(text, str) and text.split("-")[0] == "rand"
        ok = ok and rand_augment_transform(text, randaugment_hparams((0.5, 0.5, 0.5), 32)) is not None
    except (AssertionError, ValueError, KeyError, IndexError):
        ok = False
    if not ok:
        raise CdeitError(
            f"--aa {text!r} is not a RandAugment string of timm's rand_augment_transform; write e.g. rand-m9-mstd0.5."
        )


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def lr_schedule(optimizer: torch.optim.Optimizer, cfg: OptimSettings, steps_per_epoch: int) -> Any:
    """DeiT's Table 1 schedule per optimizer step, as timm's `create_scheduler_v2` builds it (docs/training.md).

    Linear warmup from `warmup_lr` over the first warmup_epochs x steps steps, inside the total; then
    min_lr + (lr - min_lr) / 2 (1 + cos(pi t / T)) over all T = epochs x steps steps, so the last step is at
    min_lr (to within (lr - min_lr) pi^2 / 4T^2). Step t uses the lr the scheduler set after step t - 1.
    """
    from timm.scheduler import CosineLRScheduler

    total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    quiet_library_messages()  # e.g. timm's warning for a one-step cosine says nothing a user can act on
    return CosineLRScheduler(
        optimizer, t_initial=total, lr_min=cfg.min_lr, warmup_t=warmup, warmup_lr_init=cfg.warmup_lr,
        warmup_prefix=False, t_in_epochs=False,
    )  # fmt: skip
