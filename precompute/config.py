"""The options of `cdeit precompute-teacher`: one dataclass, the only home of their defaults."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cdeit.common.dataset import SPLITS
from cdeit.common.hub import DEFAULT_TEACHER
from cdeit.common.views import Augmentation


@dataclass
class PrecomputeConfig:
    """The options of `cdeit precompute-teacher`."""

    data: Path
    out: Path
    teacher: str = DEFAULT_TEACHER  # anything timm.create_model accepts (name, name.tag, hf-hub:, local-dir:)
    teacher_module: str | None = None  # FILE.py or package.module imported first: its @register_model teachers
    checkpoint: Path | None = None
    random_weights: bool = False
    head: str | None = None  # None: fit on the train features (paper 4.1); "none": the teacher's own; else a file
    batch_size: int | None = None  # None: 1024 on CUDA, 64 on CPU
    shard_size: int = 16384
    store_features: bool = False  # keep float16 features next to the logits in the final shards
    shard_index: int = 0
    num_shards: int = 1
    device: str = "auto"  # auto: cuda (cuda:LOCAL_RANK under torchrun) when available, else cpu
    seed: int = 0
    workers: int | None = None  # FFCV decoding threads; None: min(8, cores)
    head_epochs: int = 50
    head_lr: float = 5e-5  # paper 4.1; a random-weight teacher's features need a larger one
    head_standardize: bool = False  # z-score the features for the fit (folded into the head afterwards)
    splits: tuple[str, ...] = SPLITS
    view: str = "same"  # same: the teacher sees each sample (the paper); clean: each sample's clean source, once
    targets: tuple[str, ...] = ("logits",)  # and any of embedding, patches, attention (docs/asymmetric.md)
    # --views K: the teacher's logits on K augmented views per train sample (docs/consistent-views.md); 0: none.
    # The settings are the trainer's (Augmentation's defaults are TrainConfig's); the draws use `seed`.
    views: int = 0
    erasing_prob: float = Augmentation.erasing_prob
    mixup_prob: float = Augmentation.mixup_prob
    mixup_alpha: float = Augmentation.mixup_alpha
    cutmix_prob: float = Augmentation.cutmix_prob
    cutmix_alpha: float = Augmentation.cutmix_alpha

    @property
    def augmentation(self) -> Augmentation:
        """The augmentation the views draw."""
        return Augmentation(self.erasing_prob, self.mixup_prob, self.mixup_alpha, self.cutmix_prob, self.cutmix_alpha)
