"""Where the Trainer's teacher targets come from: one object, and the extension point it implements.

The Trainer asks one `TeacherSource` for each batch's targets. A run loads it from the teacher cache
(`load_teacher`: common.cache's `TeacherTargets`, a table on the device gathered by index or source id). Any
other object with the same four members plugs in through `Trainer(cfg, teacher=...)`: bench/bench_train.py
passes one with random logits, and `--online-teacher` (train/core/online.py) runs the teacher on each augmented batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cdeit.train.core.config import ALIGN_TARGETS, TrainConfig

if TYPE_CHECKING:
    import torch

    from cdeit.common.cache import TeacherTargets
    from cdeit.train.core.models import Normalise
    from cdeit.train.core.online import OnlineTeacher
    from cdeit.train.core.replay import ViewReplay


@runtime_checkable
class TeacherSource(Protocol):
    """Teacher targets for a training batch, computed or gathered on the device in one batched call.

    `view`: `same` when the teacher saw each sample itself, `clean` when it saw the sample's clean source.
    `fields`: the batch fields `targets_for` reads (`index`, `source` or `image`); the Trainer's loader
    yields `image`, `label`, `corruption`, `index` and adds any other field named here.
    `shapes`: each target it gives (`logits`, `embedding`, `patches`, `attention`) -> the shape of one row.
    `targets_for(batch, names)`: `batch` maps field names to the batch's tensors (uint8 images, int64
    index, ...); returns name -> (B, ...) tensor for each of `names`, on the batch's device.
    """

    view: str

    @property
    def fields(self) -> tuple[str, ...]: ...

    @property
    def shapes(self) -> Mapping[str, tuple[int, ...]]: ...

    def targets_for(self, batch: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]: ...


def target_names(cfg: TrainConfig) -> tuple[str, ...]:
    """What a run asks of its teacher: logits to distil from, then the feature targets `--align` compares."""
    logits = ("logits",) if cfg.distill != "none" else ()
    return logits + tuple(k for k in ALIGN_TARGETS if k in cfg.align)


def load_teacher(
    cfg: TrainConfig, device: torch.device, normalise: Normalise | None = None
) -> TeacherTargets | ViewReplay | OnlineTeacher | None:
    """The train split's cached targets that `cfg` uses, on `device` (None when it distils and aligns nothing).

    Only the tables the run reads are loaded: the paper's recipe loads one (N, classes) logit table even from a
    cache that also holds features. A K-view cache (`precompute-teacher --views K`) gives a `ViewReplay`
    (train/core/replay.py), which also renders each batch's images: the optional members `start_epoch(epoch)` and
    `replay(batch) -> (uint8 images, Targets)` that the Trainer calls when a source has them. `--online-teacher`
    gives an `OnlineTeacher` (train/core/online.py): the cache's teacher rebuilt, with the optional member
    `teach_augmented(images)` that the Trainer calls on the student's erased and mixed batch (`normalise`: the
    student's input normalisation, which it inverts).
    """
    names = target_names(cfg)
    if not names:
        return None
    if cfg.online_teacher:
        from cdeit.train.core.online import load_online_teacher

        if normalise is None:
            raise ValueError("an online teacher needs the student's Normalise")
        return load_online_teacher(cfg, device, normalise)
    from cdeit.common.cache import load_teacher_targets, read_cache_manifest, views_of

    if views_of(read_cache_manifest(cfg.teacher_cache)["provenance"]):
        from cdeit.train.core.replay import load_view_replay

        return load_view_replay(cfg, device, cfg.epochs)

    return load_teacher_targets(cfg.teacher_cache, cfg.data, "train", device, names)
