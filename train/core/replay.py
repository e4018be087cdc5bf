"""Replaying a K-view cache: the student trains on exactly the augmented images the teacher saw.

`ViewReplay` is a `TeacherSource` (train/core/teachers.py) that renders the batch itself: at epoch e, sample i
trains on its view k = (e + offset_i) mod K (common.views.replay_view: each view once per K epochs), re-rendered
from the stored parameters by common.views.render_views (the function the precompute called), with the teacher
logits of that very image as the target and the labels mixed by the stored weight. No further erasing or Mixup
is drawn for such a batch: the view already holds them. docs/consistent-views.md explains the method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from cdeit.common.console import console
from cdeit.common.errors import CdeitError
from cdeit.common.views import Augmentation, counter_hash, replay_view, split_tensors
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.mixing import Targets, smoothed_one_hot

if TYPE_CHECKING:
    from cdeit.common.cache import AugmentedViews
    from cdeit.train.core.augment import Augment

CHECKS_PER_EPOCH = 8  # views re-rendered and checked against their stored image checksum at each epoch's start


def run_augmentation(cfg: TrainConfig) -> Augmentation:
    """The augmentation a training run draws (its erasing, Mixup and CutMix settings)."""
    return Augmentation(cfg.erasing_prob, cfg.mixup_prob, cfg.mixup_alpha, cfg.cutmix_prob, cfg.cutmix_alpha)


class ViewReplay:
    """Teacher targets and the augmented images of a K-view cache, for the batches of one training run.

    Holds the cache's view tables (common.cache.AugmentedViews) and the train split's images, labels and
    corruption types on the device: a view's partner can be any sample, not only one of the batch.
    """

    view = "augmented"
    fields = ("index",)

    def __init__(self, views: AugmentedViews, split: Mapping[str, torch.Tensor], cache: str):
        self.views, self.cache = views, cache
        self.images, self.labels, self.corruption = split["image"], split["label"], split["corruption"]
        self.num_classes = int(views.logits.shape[-1])
        self.epoch = 0

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {"logits": (self.num_classes,)}

    def start_epoch(self, epoch: int) -> None:
        """Set the epoch the views are chosen for, and re-render a few of them against their checksums."""
        self.epoch = epoch
        n = self.views.count
        pick = counter_hash(epoch, torch.arange(CHECKS_PER_EPOCH), torch.zeros(CHECKS_PER_EPOCH, dtype=torch.long), 7)
        index = (pick % n).to(self.images.device)
        bad = self.views.mismatches(self.images, index, self.view_of(index))
        if bool(bad.any()):
            i = int(index[bad][0])
            raise CdeitError(
                f"view {int(self.view_of(index[bad][:1])[0])} of train sample {i} in cache {self.cache} renders "
                "differently from the image the teacher saw; run `cdeit cache verify CACHE --data DATA --full`."
            )

    def view_of(self, index: torch.Tensor) -> torch.Tensor:
        """The view each sample trains on this epoch."""
        return replay_view(self.views.seed, self.epoch, index, self.views.views)

    def replay(self, batch: Mapping[str, torch.Tensor], augment: Augment) -> tuple[torch.Tensor, Targets]:
        """(uint8 images (B, 3, 32, 32), targets) of the batch: the rendered views, their logits, mixed labels."""
        index = batch["index"]
        view = self.view_of(index)
        rows = self.views.rows(index, view)
        images = self.views.render(self.images, index, view)
        own = augment.targets(batch, self.views.logits[index, view])  # the teacher saw this very image: not mixed
        w = rows.weight.float()[:, None]  # (B, 1): the share of the sample's own label
        partner_label = smoothed_one_hot(self.labels[rows.partner], self.num_classes, augment.smoothing)
        partner_corruption = smoothed_one_hot(self.corruption[rows.partner], own.corruption.shape[1])
        return images, replace(
            own,
            label=own.label * w + partner_label * (1 - w),
            corruption=own.corruption * w + partner_corruption * (1 - w),
            perm=rows.partner,
        )

    def targets(self, batch: Mapping[str, torch.Tensor], augment: Augment) -> tuple[torch.Tensor, Targets]:
        """The rendered views, normalised: they already hold their erasing and mixing, so `augment` adds none."""
        images, targets = self.replay(batch, augment)
        return augment.normalise(images), targets

    def describe(self) -> str:
        return f"{self.view}-view cache joined by {', '.join(self.fields)}"


def load_view_replay(cfg: TrainConfig, device: torch.device, epochs: int) -> ViewReplay:
    """The K-view cache `cfg.teacher_cache` ready to replay, after checking its settings against the run's."""
    from cdeit.common.cache import load_augmented_views

    if cfg.align:
        raise CdeitError(
            f"--align needs feature targets, but cache {cfg.teacher_cache} holds K augmented views with logits only; "
            "drop --align or use a cache made with --targets."
        )
    views = load_augmented_views(cfg.teacher_cache, cfg.data, device)
    if diff := run_augmentation(cfg).differences(views.augmentation):
        raise CdeitError(
            f"cache {cfg.teacher_cache} holds views drawn with other augmentation settings than this run's "
            f"({'; '.join(diff)}: run vs cache); train with the cache's settings or recompute it with yours."
        )
    console.print(
        f"teacher: {views.views} augmented views per train sample replayed exactly from {cfg.teacher_cache} "
        f"(each view once per {views.views} epochs)"
    )
    if epochs > views.views:
        console.print(
            f"[yellow]{epochs} epochs exceed the cache's {views.views} views: each view repeats about "
            f"{epochs / views.views:.1f} times; recompute with --views {epochs} for a fresh view every epoch.[/]"
        )
    split = split_tensors(cfg.data, "train", device, ("image", "label", "corruption"))
    return ViewReplay(views, split, cfg.teacher_cache)
