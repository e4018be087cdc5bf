"""RandAugment on the training batch (`--aa rand-m9-mstd0.5`), with timm's own `rand_augment_transform`.

timm's RandAugment is per-image PIL code, so the uint8 batch (B, 3, H, W) goes to the CPU, each image through the
transform, and back, before normalisation (train/core/augment.py). Its draws come from Python's and NumPy's global
generators; each batch seeds them from the run's own torch generator (kept in the checkpoint) and puts their
previous states back, so a killed run resumes exactly and nothing else's draws move. The cost is measured in
docs/benchmarks.md; docs/decisions.md says why it runs here.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from cdeit.common.errors import CdeitError
from cdeit.train.core.optim import randaugment_hparams


class BatchRandAugment:
    """timm's RandAugment applied to each image of a uint8 NCHW batch, drawn from a seeded torch generator."""

    def __init__(self, config: str, mean: tuple[float, ...], size: int, seed: int):
        from timm.data import rand_augment_transform

        self.config = config
        self.transform = rand_augment_transform(config, randaugment_hparams(mean, size))
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 on any device -> the same, each image augmented by timm's transform."""
        from PIL import Image

        batch_seed = int(torch.randint(2**31, (), generator=self.generator))
        saved = random.getstate(), np.random.get_state()
        random.seed(batch_seed)
        np.random.seed(batch_seed)
        try:
            pixels = images_u8.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
            out = np.stack([np.asarray(self.transform(Image.fromarray(p))) for p in pixels])
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(images_u8.device, non_blocking=True).contiguous()

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def randaugment_for(
    aa: str | None, teacher: object, mean: tuple[float, ...], seed: int, size: int = 32
) -> BatchRandAugment | None:
    """The run's RandAugment for Augment.randaugment (None without --aa); refused for a K-view replay cache, whose
    student images are the very views the teacher saw."""
    from cdeit.train.core.replay import ViewReplay

    if aa is None:
        return None
    if isinstance(teacher, ViewReplay):
        raise CdeitError(
            f"--aa {aa} cannot apply to a K-view cache, whose student images are the teacher's fixed views; "
            "drop --aa or use a cache made without --views."
        )
    return BatchRandAugment(aa, mean, size, seed)  # the dataset's size x size images
