"""Training targets and batch-level augmentation: Mixup/CutMix of images and every target, random erasing.

The teacher's logits are cached before augmentation, so Mixup mixes the cached teacher *targets* with the
same pairing and weight as the images, labels and corruption types (docs/students.md). Everything works
on whole batches on the device; the only per-batch host values are the Mixup decision and weight, drawn
from a CPU `torch.Generator` so that a resumed run can be reproduced without a device sync.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from scipy.special import betaincinv
from timm.data.random_erasing import RandomErasing as TimmRandomErasing

from cdeit.common.dataset import CLASSES, CORRUPTIONS
from cdeit.common.errors import CdeitError
from cdeit.train.core.config import DistillKind, check_distill

MixMode = Literal["none", "mixup", "cutmix"]


@dataclass(frozen=True)
class Targets:
    """Per-sample target distributions for one batch, on the images' device (each row sums to 1).

    label: (B, C) smoothed one-hot labels. teacher: (B, C) tempered teacher probabilities softmax(z_t / tau)
    for soft distillation, one-hot argmax(z_t) for hard, None without a teacher. corruption: (B, K) one-hot
    image type (0 = clean), or None. features: the teacher's feature targets for the alignment loss, by name
    (`embedding` (B, D), `patches` (B, 64, D), `attention` (B, 64), float32), or None. After mix_batch: `mode`,
    `weight` (the share of each sample's own targets, 1.0 when unmixed) and `perm` (B,) (the partner each
    sample was mixed with); the features are mixed with the same weight and pairing as everything else.
    """

    label: torch.Tensor
    teacher: torch.Tensor | None = None
    corruption: torch.Tensor | None = None
    distill: DistillKind = "none"
    tau: float | None = None
    mode: MixMode = "none"
    weight: float = 1.0
    perm: torch.Tensor | None = None
    features: dict[str, torch.Tensor] | None = None

    def distributions(self) -> dict[str, torch.Tensor]:
        """The target tensors present, by name."""
        named = {"label": self.label, "teacher": self.teacher, "corruption": self.corruption}
        return {k: v for k, v in named.items() if v is not None}


def smoothed_one_hot(index: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) int to (B, num_classes) float: (1 - smoothing) one-hot + smoothing / num_classes (as timm/torch)."""
    off = smoothing / num_classes
    return F.one_hot(index.long(), num_classes).float() * (1.0 - smoothing) + off


def make_targets(
    labels: torch.Tensor,
    corruption: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    distill: DistillKind = "none",
    tau: float = 3.0,
    smoothing: float = 0.1,
    num_classes: int = len(CLASSES),
    num_corruptions: int = len(CORRUPTIONS),
    corruption_smoothing: float = 0.0,
    features: dict[str, torch.Tensor] | None = None,
) -> Targets:
    """Targets of an unaugmented batch: smoothed labels, teacher targets for `distill`, one-hot corruption types.

    `features`: the cached teacher feature targets of the batch (embedding, patches, attention), kept as float32.
    """
    check_distill(distill)
    teacher = None
    if distill != "none":
        if teacher_logits is None:
            raise CdeitError(f"{distill} distillation needs the cached teacher logits; pass teacher_logits.")
        if teacher_logits.shape != (labels.shape[0], num_classes):
            raise CdeitError(
                f"teacher logits have shape {tuple(teacher_logits.shape)} but the batch needs "
                f"({labels.shape[0]}, {num_classes}); check that the cache matches the dataset."
            )
        teacher = teacher_targets(teacher_logits, distill, tau)
    corr = None if corruption is None else smoothed_one_hot(corruption, num_corruptions, corruption_smoothing)
    label = smoothed_one_hot(labels, num_classes, smoothing)
    feats = {k: v.float() for k, v in features.items()} if features else None
    return Targets(label, teacher, corr, distill=distill, tau=tau if distill == "soft" else None, features=feats)


def with_teacher(targets: Targets, teacher_logits: torch.Tensor, distill: DistillKind, tau: float) -> Targets:
    """`targets` with the teacher targets of logits the teacher computed on the batch as augmented (not mixed)."""
    check_distill(distill)
    if distill == "none":
        raise CdeitError("with_teacher needs --distill soft or hard.")
    if teacher_logits.shape != targets.label.shape:
        raise CdeitError(
            f"teacher logits have shape {tuple(teacher_logits.shape)} but the batch needs "
            f"{tuple(targets.label.shape)}; check that the teacher's head matches the dataset's classes."
        )
    return replace(
        targets, teacher=teacher_targets(teacher_logits, distill, tau), distill=distill,
        tau=tau if distill == "soft" else None,
    )  # fmt: skip


def teacher_targets(teacher_logits: torch.Tensor, distill: Literal["soft", "hard"], tau: float) -> torch.Tensor:
    """Soft: tempered probabilities softmax(z_t / tau) (Eq. 4). Hard: one-hot argmax(z_t) (Eq. 5), unsmoothed."""
    z_t = teacher_logits.float()  # (B, C)
    if distill == "soft":
        return F.softmax(z_t / tau, dim=-1)
    return F.one_hot(z_t.argmax(-1), z_t.shape[-1]).float()


def sample_beta(alpha: float, generator: torch.Generator | None = None) -> float:
    """One draw from Beta(alpha, alpha) by the inverse CDF of a uniform from `generator` (a CPU generator)."""
    u = torch.rand((), generator=generator).item()
    return float(betaincinv(alpha, alpha, u))


def cutmix_box(
    height: int, width: int, lam: float, generator: torch.Generator | None = None
) -> tuple[tuple[int, int, int, int], float]:
    """timm's CutMix box (y0, y1, x0, x1) for weight `lam`, and the weight corrected for clipping at the border."""
    ratio = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy = int(torch.randint(0, height, (), generator=generator))
    cx = int(torch.randint(0, width, (), generator=generator))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, width)
    return (y0, y1, x0, x1), 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)


def mix_targets(targets: Targets, weight: float, perm: torch.Tensor, mode: MixMode) -> Targets:
    """Every target (distributions and teacher features) mixed as weight * own + (1 - weight) * partner's.

    One pairing `perm` and one weight for all of them. Under CutMix the features are mixed with the box's area
    share too, not patch by patch (the box is not aligned to the patch grid).
    """
    mixed: dict = {k: v * weight + v[perm] * (1.0 - weight) for k, v in targets.distributions().items()}
    if targets.features:
        mixed["features"] = {k: v * weight + v[perm] * (1.0 - weight) for k, v in targets.features.items()}
    return replace(targets, **mixed, mode=mode, weight=weight, perm=perm)


def mix_batch(
    images: torch.Tensor,
    targets: Targets,
    mixup_prob: float = 0.3,
    mixup_alpha: float = 0.8,
    cutmix_prob: float = 0.0,
    cutmix_alpha: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, Targets]:
    """Mixup (probability `mixup_prob`) or CutMix (`cutmix_prob`) of a whole batch, else nothing.

    One draw per batch decides the mode; one Beta(alpha, alpha) weight and one pairing serve the images and
    every target. The pairing is timm's: the batch flipped, sample i with sample B - 1 - i (the loader
    shuffles, so the pairs are random). `generator` must be a CPU generator (None: torch's default one).
    """
    if min(mixup_prob, cutmix_prob) < 0 or mixup_prob + cutmix_prob > 1:
        raise CdeitError(f"mixup_prob {mixup_prob} and cutmix_prob {cutmix_prob} must be >= 0 and sum to at most 1.")
    u = torch.rand((), generator=generator).item()
    if u >= mixup_prob + cutmix_prob:
        return images, targets
    if u < mixup_prob:
        return mix_with(images, targets, "mixup", sample_beta(mixup_alpha, generator))
    box, lam = cutmix_box(*images.shape[-2:], sample_beta(cutmix_alpha, generator), generator)
    return mix_with(images, targets, "cutmix", lam, box)


def mix_with(
    images: torch.Tensor,
    targets: Targets,
    mode: MixMode,
    weight: float,
    box: tuple[int, int, int, int] | None = None,
) -> tuple[torch.Tensor, Targets]:
    """Mix a batch with its flip at a given weight: blend (mixup) or paste the partner's `box` (cutmix).

    For cutmix, `weight` must be the share of the image outside `box` (as cutmix_box returns it).
    """
    if targets.label.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {targets.label.shape[0]} targets")
    if mode == "none":
        return images, targets
    perm = torch.arange(images.shape[0] - 1, -1, -1, device=images.device)  # timm's flip pairing, (B,)
    if mode == "mixup":
        mixed = images * weight + images[perm] * (1.0 - weight)  # (B, 3, H, W)
    else:
        y0, y1, x0, x1 = box if box is not None else (0, 0, 0, 0)
        mixed = images.clone()
        mixed[:, :, y0:y1, x0:x1] = images[perm][:, :, y0:y1, x0:x1]
    return mixed, mix_targets(targets, weight, perm, mode)


class RandomErasing:
    """timm's random erasing (probability 0.25, per-pixel normal noise) on normalised batches; targets unchanged.

    backend 'batch' (default) draws the same boxes as timm.data.random_erasing.RandomErasing (area 2-33 % of
    the image, log-uniform aspect 0.3-3.3, up to 10 tries per image, one box) for the whole batch at once on
    the device, from `generator` (on the images' device). backend 'timm' calls timm's class itself, which
    loops over the batch in Python and draws from Python's `random` module, so `generator` cannot seed it.
    """

    def __init__(
        self,
        probability: float = 0.25,
        min_area: float = 0.02,
        max_area: float = 1 / 3,
        min_aspect: float = 0.3,
        attempts: int = 10,
        backend: Literal["batch", "timm"] = "batch",
        device: str | torch.device = "cpu",
    ) -> None:
        self.probability, self.min_area, self.max_area, self.attempts = probability, min_area, max_area, attempts
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        if backend not in ("batch", "timm"):
            raise CdeitError(f"random erasing backend {backend!r} is not one of batch, timm.")
        self.backend = backend
        self.timm = None
        if backend == "timm":
            self.timm = TimmRandomErasing(probability, min_area, max_area, min_aspect, mode="pixel", device=device)

    def __call__(
        self, images: torch.Tensor, targets: Targets, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Targets]:
        """Erase boxes in a normalised batch (B, C, H, W); the targets pass through unchanged.

        Returns a new tensor (the timm backend erases in place, as timm does).
        """
        if self.timm is not None:
            return self.timm(images), targets
        return torch.where(self.mask(images, generator), self.noise(images, generator), images), targets

    def noise(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)

    def mask(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 1, H, W) bool: the erased box of each image (empty for images left alone)."""
        b, _, h, w = images.shape
        dev = images.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator, device=dev)

        apply = rand(b) < self.probability  # (B,)
        area = (self.min_area + (self.max_area - self.min_area) * rand(b, self.attempts)) * (h * w)  # (B, A)
        aspect = torch.exp(self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0]) * rand(b, self.attempts))
        box_h = torch.round(torch.sqrt(area * aspect)).long()  # (B, A)
        box_w = torch.round(torch.sqrt(area / aspect)).long()
        fits = (box_h < h) & (box_w < w)  # (B, A)
        first = fits.long().argmax(1, keepdim=True)  # the first attempt that fits, as timm's loop
        box_h, box_w = box_h.gather(1, first), box_w.gather(1, first)  # (B, 1)
        apply &= fits.any(1)
        top = (rand(b, 1) * (h - box_h + 1)).long()  # uniform in 0..h - box_h, (B, 1)
        left = (rand(b, 1) * (w - box_w + 1)).long()
        ys = torch.arange(h, device=dev)[None, :, None]  # (1, H, 1)
        xs = torch.arange(w, device=dev)[None, None, :]  # (1, 1, W)
        top, left, box_h, box_w = (t[:, :, None] for t in (top, left, box_h, box_w))  # each (B, 1, 1)
        inside = (ys >= top) & (ys < top + box_h) & (xs >= left) & (xs < left + box_w)  # (B, H, W)
        return (inside & apply[:, None, None])[:, None]
