"""The training engine as plain functions (as DeiT's engine.py): one optimizer step, one epoch, validation, and
`infer`, the one definition of how a student is evaluated (validation here, `cdeit evaluate` in train/use).

`Engine` holds what a step uses; the `Trainer` (train/core/trainer.py) builds it and owns the run around it.
Everything stays on the device between the rare sync points: loss sums, the first non-finite step, the
validation sums (one all-reduce at the end, exact under torchrun).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from cdeit.common import distributed
from cdeit.common.metrics import ECE_BINS, ece_bin_stats, ece_from_stats

if TYPE_CHECKING:
    from cdeit.common.distributed import DistEnv
    from cdeit.train.core.align import Alignment
    from cdeit.train.core.augment import Augment
    from cdeit.train.core.mixing import Targets
    from cdeit.train.core.models import Normalise
    from cdeit.train.core.teachers import TeacherSource

SYNC_EVERY = 10  # steps between the epoch's syncs with the device (finite check, progress line)


@dataclass
class State:
    """The run's counters, kept in the checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken: the one step counter
    best_val_acc: float = -1.0
    best_epoch: int = 0  # the epoch best.safetensors holds (0: none yet)
    train_seconds: float = 0.0
    train_images: int = 0


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite at optimizer step `step` (counted from 1)."""

    def __init__(self, step: int):
        super().__init__(f"non-finite loss at optimizer step {step}")
        self.step = step


@dataclass
class Engine:
    """What one optimizer step uses. `model` and `align_fn` as they run (compiled, DDP); `params`: every parameter
    the optimizer steps (the student's and the alignment's projections), the ones `clip_grad` clips."""

    model: nn.Module
    loss_fn: Callable[[dict[str, torch.Tensor], Targets], dict[str, torch.Tensor]]
    teacher: TeacherSource
    augment: Augment
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm's CosineLRScheduler, stepped per optimizer step
    fields: tuple[str, ...]  # the loader's batch fields, in order
    params: list[torch.Tensor]
    clip_grad: float | None = None
    alignment: Alignment | None = None
    align_fn: nn.Module | None = None
    autocast: bool = False
    lr: float = 0.0  # the lr of the latest optimizer step
    # --grad-accum-steps and --model-ema (train/core/ema.py): micro-batches per optimizer step, the weights' EMA
    accum_steps: int = 1
    ema: Any = None
    first_bad_step: torch.Tensor = field(default_factory=lambda: torch.full((), -1, dtype=torch.int64))
    # per-step logging (train/core/tracking.py): called with (step, lr, loss parts on the device), no sync
    on_step: Callable[[int, float, dict[str, torch.Tensor]], None] | None = None

    def to(self, device: torch.device) -> Engine:
        """Keep the first-bad-step marker on the training device (no sync per step)."""
        self.first_bad_step = self.first_bad_step.to(device)
        return self


def train_step(engine: Engine, batch: Sequence[torch.Tensor], state: State, micro: int = 0) -> dict[str, torch.Tensor]:
    """Forward and backward of a loader batch, micro-batch `micro` of the `accum_steps` that make one optimizer
    step (the loss divided by their number); the last one clips, steps, and updates the schedule and the EMA.
    Returns the loss parts (detached, on the device, not divided)."""
    images, targets = engine.teacher.targets(dict(zip(engine.fields, batch, strict=True)), engine.augment)
    last = micro == engine.accum_steps - 1
    sync = contextlib.nullcontext() if last or not hasattr(engine.model, "no_sync") else engine.model.no_sync()
    with sync:  # DDP: average the gradients once, on the last micro-batch
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=engine.autocast):
            if engine.alignment is None:
                outputs = engine.model(images)
            else:  # the alignment features come out of the same forward
                outputs = engine.model(images, features=engine.alignment.names)
        outputs = {k: v.float() for k, v in outputs.items()}
        parts = engine.loss_fn(outputs, targets)
        if engine.align_fn is not None:
            aligned = engine.align_fn(outputs, targets.features)
            parts = {**parts, **aligned, "total": parts["total"] + aligned["total"]}
        if micro == 0:
            engine.optimizer.zero_grad(set_to_none=True)
        (parts["total"] / engine.accum_steps if engine.accum_steps > 1 else parts["total"]).backward()
    if last:
        _optimizer_step(engine, state)
    bad = ~torch.isfinite(parts["total"].detach()) & (engine.first_bad_step < 0)
    owner = state.step if last else state.step + 1  # the optimizer step this micro-batch belongs to
    engine.first_bad_step = torch.where(bad, owner, engine.first_bad_step)  # read at the sync points
    parts = {k: v.detach() for k, v in parts.items()}
    if last and engine.on_step is not None:  # per optimizer step: the last micro-batch's loss parts
        engine.on_step(state.step, engine.lr, parts)
    return parts


def _optimizer_step(engine: Engine, state: State) -> None:
    """Clip, step, count, then the lr of the next step and the EMA (timm's order)."""
    if engine.clip_grad:
        torch.nn.utils.clip_grad_norm_(engine.params, engine.clip_grad)
    engine.lr = engine.optimizer.param_groups[0]["lr"]
    engine.optimizer.step()
    state.step += 1
    engine.scheduler.step_update(state.step)
    if engine.ema is not None:
        engine.ema.update(state.step)


def check_finite(engine: Engine) -> None:
    """Raise `NonFiniteLoss` if a step since the start had a non-finite loss (one sync)."""
    bad = int(engine.first_bad_step.item())
    if bad >= 0:
        raise NonFiniteLoss(bad)


def train_one_epoch(
    engine: Engine, loader: Any, epoch: int, state: State, dist: DistEnv, advance: Callable | None = None
) -> dict[str, float]:
    """One epoch over `loader`: the mean loss parts over ranks (`train_<part>`), images/s and the last step's lr.

    `advance(steps, info=...)` moves a progress bar every SYNC_EVERY steps; a non-finite loss stops the epoch at
    the next sync (`NonFiniteLoss`), before a checkpoint could keep the damage.
    """
    engine.model.train()
    loader.next_epoch = epoch  # FFCV's order is a function of (seed, epoch): resumable
    engine.teacher.start_epoch(epoch)
    n = engine.accum_steps  # micro-batches per optimizer step; a last incomplete group is skipped
    steps = len(loader) // n * n  # micro-batches used (the optimizer steps of the epoch when n == 1)
    sums: dict[str, torch.Tensor] = {}
    start, n_images = time.perf_counter(), 0
    for j, batch in enumerate(loader):
        if j >= steps:
            continue  # read, not trained on: the loader's epoch runs to its end
        for k, v in train_step(engine, batch, state, j % n).items():
            sums[k] = sums.get(k, 0) + v
        n_images += batch[0].shape[0]
        i = j // n  # the optimizer step within the epoch
        if j % n == n - 1 and (i % SYNC_EVERY == SYNC_EVERY - 1 or j == steps - 1):  # sync with the device rarely
            check_finite(engine)
            if advance:
                rate = n_images * dist.world / (time.perf_counter() - start)
                means = (torch.stack([sums[k] for k in sorted(sums)]) / (j + 1)).tolist()  # one sync for all parts
                loss = " ".join(f"{k} {v:.3f}" for k, v in zip(sorted(sums), means, strict=True))
                advance(i % SYNC_EVERY + 1, info=f"{rate:,.0f} img/s  {loss}")
    seconds = time.perf_counter() - start
    state.train_seconds += seconds
    state.train_images += n_images * dist.world
    stats = torch.stack([sums[k] for k in sorted(sums)]) / steps
    stats = distributed.all_reduce_sum(stats, dist) / dist.world
    out = {f"train_{k}": float(v) for k, v in zip(sorted(sums), stats.tolist(), strict=True)}
    out["train_images_per_s"] = n_images * dist.world / seconds
    out["lr"] = engine.lr  # the lr of the epoch's last optimizer step
    return out


@dataclass
class Inference:
    """A student's outputs on a batch: `logits` (B, C) float32 inference logits (its heads combined), `heads`
    each head's logits as computed, `cosines` (B,) float32 per pair of prefix tokens (paper 4.4)."""

    logits: torch.Tensor
    heads: dict[str, torch.Tensor]
    cosines: dict[tuple[str, str], torch.Tensor]


@torch.no_grad()
def infer(model: nn.Module, normalise: Normalise, images_u8: torch.Tensor, autocast: bool = False) -> Inference:
    """The student's inference on a uint8 batch: the one definition of how a student is evaluated."""
    with torch.autocast(images_u8.device.type, dtype=torch.bfloat16, enabled=autocast):
        features = model.forward_features(normalise(images_u8))  # (B, T + N, D)
        heads = model.heads(features)
        logits = model.combine(heads)
    features, names = features.float(), model.token_names
    cosines = {
        (names[i], names[j]): F.cosine_similarity(features[:, i], features[:, j], dim=1)
        for i in range(len(names))
        for j in range(i + 1, len(names))
    }
    return Inference(logits.float(), heads, cosines)


@torch.no_grad()
def validate(
    model: nn.Module,
    loader: Any,
    normalise: Normalise,
    split: str,
    dist: DistEnv,
    device: torch.device,
    teacher: torch.Tensor | None = None,
    autocast: bool = False,
) -> dict[str, float]:
    """Accuracy, mean cross-entropy and ECE of the inference logits, the mean cosine of every pair of prefix
    tokens and, with the teacher's logits of the split (N, C) by sample index, the student's top-1 agreement with
    them and KL(teacher || student). Sums stay on the device; one all-reduce makes them exact under torchrun
    (each rank's loader holds its own share of the samples)."""
    model.eval()
    names = model.token_names
    pairs = [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    keys = ["nll", "correct", *(["agree", "kl"] if teacher is not None else []), *pairs]
    sums = torch.zeros(len(keys), dtype=torch.float64, device=device)
    bins = torch.zeros(3, ECE_BINS, dtype=torch.float64, device=device)  # count, confidence, correct per bin
    for images_u8, labels, index in loader:
        out = infer(model, normalise, images_u8, autocast)
        sums += torch.stack([v.double() for v in _batch_sums(out, labels, index, teacher).values()])
        bins += ece_bin_stats(out.logits.softmax(1), labels)
    values = distributed.all_reduce_sum(torch.cat([sums, bins.flatten()]), dist).tolist()
    total, stats = dict(zip(keys, values[: len(keys)], strict=True)), values[len(keys) :]
    n = sum(stats[:ECE_BINS])  # the bins' counts: every sample once
    ece = ece_from_stats(torch.tensor(stats).view(3, ECE_BINS))  # float32 stats, as always computed
    result = {f"{split}_acc": total["correct"] / n, f"{split}_loss": total["nll"] / n, f"{split}_ece": ece}
    if teacher is not None:
        result |= {f"{split}_teacher_agreement": total["agree"] / n, f"{split}_teacher_kl": total["kl"] / n}
    for a, b in pairs:
        result[f"{split}_cos_{a}~{b}"] = total[(a, b)] / n
    return result


def _batch_sums(
    out: Inference, labels: torch.Tensor, index: torch.Tensor, teacher: torch.Tensor | None
) -> Mapping[Any, torch.Tensor]:
    """One batch's sums, by name, in `validate`'s order of keys."""
    logits = out.logits
    sums: dict[Any, torch.Tensor] = {
        "nll": F.cross_entropy(logits, labels, reduction="sum"),
        "correct": (logits.argmax(1) == labels).sum(),
    }
    if teacher is not None:
        t = teacher[index]  # (B, C): the teacher's logits of these samples
        sums["agree"] = (logits.argmax(1) == t.argmax(1)).sum()
        sums["kl"] = F.kl_div(logits.log_softmax(1), t.log_softmax(1), reduction="sum", log_target=True)
    return sums | {pair: cos.sum() for pair, cos in out.cosines.items()}
