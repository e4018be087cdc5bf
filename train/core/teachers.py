"""Where the Trainer's batches and teacher targets come from: one protocol, `TeacherSource`, and its kinds.

Every step the Trainer asks its source for `targets(batch, augment) -> (images, Targets)`: the normalised,
erased and mixed images the student trains on and their targets. The kinds: `NoTeacher` (--distill none without
--align), `CachedTeacher` (a table of teacher outputs gathered by index or source id: common.cache's
`TeacherTargets`, or any `TargetTable`), `ViewReplay` (a K-view cache, train/core/replay.py) and `OnlineTeacher`
(`--online-teacher`, train/core/online.py). Any other object with the same members plugs in through
`Trainer(cfg, teacher=...)`: bench/bench_train.py passes a `CachedTeacher` over random logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cdeit.train.core.config import ALIGN_TARGETS, TrainConfig

if TYPE_CHECKING:
    import torch

    from cdeit.train.core.augment import Augment
    from cdeit.train.core.mixing import Targets
    from cdeit.train.core.models import Normalise


@runtime_checkable
class TeacherSource(Protocol):
    """The student's batches and their targets, made on the device in one batched call per step.

    `view`: what the teacher saw of each sample: `none` (no teacher), `same` (the sample), `clean` (its clean
    source photograph) or `augmented` (the very image the student trains on).
    `fields`: the batch fields it reads beyond the Trainer's `image`, `label`, `corruption`, `index` (a clean-view
    cache reads `source`), which the Trainer's loader then also yields.
    `shapes`: each teacher target it gives (`logits`, `embedding`, `patches`, `attention`) -> one row's shape.
    `start_epoch(epoch)`: called before each epoch (a K-view cache picks the epoch's views).
    `targets(batch, augment)`: `batch` maps field names to the loader's tensors (uint8 images, int64 labels, ...);
    returns the float images the student trains on and their `Targets`, made with `augment` (train/core/augment.py).
    `describe()`: what the teacher is, for the run's console line.
    """

    view: str

    @property
    def fields(self) -> tuple[str, ...]: ...

    @property
    def shapes(self) -> Mapping[str, tuple[int, ...]]: ...

    def start_epoch(self, epoch: int) -> None: ...

    def targets(self, batch: Mapping[str, torch.Tensor], augment: Augment) -> tuple[torch.Tensor, Targets]: ...

    def describe(self) -> str: ...


@runtime_checkable
class TargetTable(Protocol):
    """Teacher outputs gathered for a batch (common.cache's `TeacherTargets`, or a table of your own).

    `targets_for(batch, names)` returns name -> (B, ...) tensor for each of `names`, on the batch's device; it
    reads the batch fields `fields` (`index`, `source` or `image`).
    """

    view: str

    @property
    def fields(self) -> tuple[str, ...]: ...

    @property
    def shapes(self) -> Mapping[str, tuple[int, ...]]: ...

    def targets_for(self, batch: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]: ...


class NoTeacher:
    """No teacher: the labels alone, on the erased and mixed batch (--distill none without --align)."""

    view = "none"
    fields: tuple[str, ...] = ()
    shapes: Mapping[str, tuple[int, ...]] = {}

    def start_epoch(self, epoch: int) -> None:
        """Nothing changes from one epoch to the next."""

    def targets(self, batch: Mapping[str, torch.Tensor], augment: Augment) -> tuple[torch.Tensor, Targets]:
        return augment(batch["image"], augment.targets(batch))

    def describe(self) -> str:
        return "none"


class CachedTeacher:
    """Teacher targets gathered from a table (`names`: the logits to distil from, then the alignment's features),
    made into the batch's targets before the batch is erased and mixed, so they are mixed with it."""

    def __init__(self, table: TargetTable, names: Sequence[str]):
        self.table, self.names = table, tuple(names)
        self.view = table.view

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.table.fields)

    @property
    def shapes(self) -> Mapping[str, tuple[int, ...]]:
        return self.table.shapes

    def start_epoch(self, epoch: int) -> None:
        """A table is the same every epoch."""

    def gather(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's rows of every target the run uses, in one batched call on the device."""
        return self.table.targets_for(batch, self.names) if self.names else {}

    def targets(self, batch: Mapping[str, torch.Tensor], augment: Augment) -> tuple[torch.Tensor, Targets]:
        rows = self.gather(batch)
        features = {k: rows[k] for k in self.names if k != "logits"}
        return augment(batch["image"], augment.targets(batch, rows.get("logits"), features or None))

    def describe(self) -> str:
        return f"{self.view}-view cache joined by {', '.join(self.fields)}"


def target_names(cfg: TrainConfig) -> tuple[str, ...]:
    """What a run asks of its teacher: logits to distil from, then the feature targets `--align` compares."""
    logits = ("logits",) if cfg.distill != "none" else ()
    return logits + tuple(k for k in ALIGN_TARGETS if k in cfg.align)


def load_teacher(cfg: TrainConfig, device: torch.device, normalise: Normalise) -> TeacherSource:
    """The teacher source `cfg` describes, on `device`.

    Only the tables the run reads are loaded: the paper's recipe loads one (N, classes) logit table even from a
    cache that also holds features. A K-view cache (`precompute-teacher --views K`) gives a `ViewReplay`
    (train/core/replay.py); `--online-teacher` gives an `OnlineTeacher` (train/core/online.py), which maps the
    student's normalised batch back to pixels with `normalise`.
    """
    names = target_names(cfg)
    if not names:
        return NoTeacher()
    if cfg.online_teacher:
        from cdeit.train.core.online import load_online_teacher

        return load_online_teacher(cfg, device, normalise)
    from cdeit.common.cache import load_teacher_targets, read_cache_manifest, views_of

    if views_of(read_cache_manifest(cfg.teacher_cache)["provenance"]):
        from cdeit.train.core.replay import load_view_replay

        return load_view_replay(cfg, device, cfg.epochs)
    return CachedTeacher(load_teacher_targets(cfg.teacher_cache, cfg.data, "train", device, names), names)


def teacher_temperature(cfg: TrainConfig, from_cache: bool = True) -> float:
    """What the cached logits are divided by before soft targets (`--teacher-temperature`): a number as given, 1 for
    `none`, and for `auto` the temperature the cache fitted on val (1 for a cache that records none, or for a
    teacher source given in its place, `from_cache=False`)."""
    auto_is_one = cfg.teacher_temperature == "auto" and not from_cache
    if cfg.distill == "none" or cfg.teacher_temperature == "none" or auto_is_one:
        return 1.0
    if cfg.teacher_temperature != "auto":
        return float(cfg.teacher_temperature)
    from cdeit.common.cache import read_cache_manifest

    calibration = read_cache_manifest(cfg.teacher_cache).get("calibration") or {}
    return float(calibration.get("temperature", 1.0))
