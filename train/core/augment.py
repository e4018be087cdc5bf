"""How a training batch becomes what the student trains on: targets, normalisation, random erasing, Mixup/CutMix.

Every teacher source (train/core/teachers.py) builds its batch through one `Augment`, so the order (erasing
before mixing, DeiT's order), the target settings and the random streams are the same whatever the teacher.
The generators (and --aa's, train/core/randaugment.py) are the run's own and travel in its checkpoint
(`rng_state`), so a killed run resumes exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from cdeit.train.core.config import DistillKind, TrainConfig
from cdeit.train.core.mixing import RandomErasing, Targets, make_targets, mix_batch, with_teacher

if TYPE_CHECKING:
    from cdeit.train.core.models import Normalise


class Augment:
    """A run's batch recipe: `targets` for an unaugmented batch, `__call__` to normalise, erase and mix it.

    `mix_gen` (CPU) draws Mixup/CutMix, `erase_gen` (on `device`) draws the erasing boxes; both are seeded from
    the run's seed and the process's rank, as they always were.
    """

    def __init__(self, cfg: TrainConfig, normalise: Normalise, num_classes: int, device: torch.device, rank: int = 0):
        self.normalise = normalise
        self.num_classes = num_classes
        self.distill: DistillKind = cfg.distill
        self.tau, self.smoothing = cfg.tau, cfg.label_smoothing
        self.temperature = 1.0  # the teacher's calibration (--teacher-temperature): logits / it, then tau on top
        self.mixing = (cfg.mixup_prob, cfg.mixup_alpha, cfg.cutmix_prob, cfg.cutmix_alpha)
        self.erasing = RandomErasing(cfg.erasing_prob, device=device) if cfg.erasing_prob > 0 else None
        self.mix_gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
        self.erase_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + 500 + rank)
        self.randaugment: Any = None  # --aa: the Trainer sets timm's RandAugment (train/core/randaugment.py)

    def targets(
        self,
        batch: Mapping[str, torch.Tensor],
        logits: torch.Tensor | None = None,
        features: dict[str, torch.Tensor] | None = None,
        distill: DistillKind | None = None,
    ) -> Targets:
        """Targets of the unaugmented batch (its `label` and `corruption` fields): smoothed labels, the teacher
        targets of `logits` for the run's --distill (or `distill`), the alignment's feature targets."""
        logits = logits / self.temperature if logits is not None and self.temperature != 1.0 else logits
        return make_targets(batch["label"], batch["corruption"], logits, self.distill if distill is None else distill,
                            self.tau, self.smoothing, num_classes=self.num_classes, features=features)  # fmt: skip

    def __call__(self, images_u8: torch.Tensor, targets: Targets) -> tuple[torch.Tensor, Targets]:
        """RandAugment (--aa) the uint8 batch, normalise it, erase (per image), then mix (per batch), DeiT's order."""
        if self.randaugment is not None:
            images_u8 = self.randaugment(images_u8)
        images = self.normalise(images_u8)
        if self.erasing is not None:
            images, targets = self.erasing(images, targets, self.erase_gen)
        mixup_prob, mixup_alpha, cutmix_prob, cutmix_alpha = self.mixing
        return mix_batch(images, targets, mixup_prob, mixup_alpha, cutmix_prob, cutmix_alpha, generator=self.mix_gen)

    def with_teacher(self, targets: Targets, logits: torch.Tensor) -> Targets:
        """`targets` with the run's teacher targets of logits computed on the augmented batch (not mixed)."""
        logits = logits / self.temperature if self.temperature != 1.0 else logits
        return with_teacher(targets, logits, self.distill, self.tau)

    def rng_state(self) -> dict[str, torch.Tensor]:
        """The generators' states, as the checkpoint keeps them (`mix`, `erase`)."""
        state = {"mix": self.mix_gen.get_state(), "erase": self.erase_gen.get_state()}
        return state | ({"aa": self.randaugment.get_state()} if self.randaugment is not None else {})

    def set_rng_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.mix_gen.set_state(state["mix"])
        self.erase_gen.set_state(state["erase"])
        if self.randaugment is not None:
            self.randaugment.set_state(state["aa"])
