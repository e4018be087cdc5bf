"""What one `cdeit precompute-teacher` invocation resolved, shared by every step of the run (`PrecomputeJob`).

The steps (passes, head_stage, resume, storage, report, augmented) take it as their argument and import it from
here, never from run.py, which builds it (`prepare_job`) and strings the steps together: imports run one way,
run -> steps -> job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cdeit.common.cache import SOURCES_SPLIT, TARGETS, ShardSpec, provenance, shard_attrs
from cdeit.common.distributed import DistEnv
from cdeit.common.head import HeadFit, LinearHead
from cdeit.common.teacher import Teacher
from cdeit.common.tokens import TOKEN_TARGETS
from cdeit.precompute.config import PrecomputeConfig

if TYPE_CHECKING:
    import torch


@dataclass
class PrecomputeJob:
    """What one invocation resolved: the dataset manifest, teacher, device, batch size and head settings."""

    cfg: PrecomputeConfig
    data: dict[str, Any]
    teacher: Teacher
    device: torch.device
    batch_size: int
    env: DistEnv
    fit: HeadFit
    sums: dict[str, str] = field(default_factory=dict)  # file -> sha256 from the manifest found at start

    @property
    def compute_dtype(self) -> str:
        return "bfloat16-autocast" if self.device.type == "cuda" else "float32"

    @property
    def clean(self) -> bool:
        return self.cfg.view == "clean"

    @property
    def store_features(self) -> bool:
        """The `embedding` target is the pre-logit features that --store-features keeps."""
        return self.cfg.store_features or "embedding" in self.cfg.targets

    @property
    def extras(self) -> tuple[str, ...]:
        """The per-patch targets (patches, attention) this run computes beside the features."""
        return tuple(t for t in TARGETS if t in self.cfg.targets and t in TOKEN_TARGETS)

    @property
    def cache_splits(self) -> tuple[str, ...]:
        """What the cache's rows are: the splits (same view) or the dataset's source photographs (clean view)."""
        return (SOURCES_SPLIT,) if self.clean else self.cfg.splits

    @property
    def teacher_grid(self) -> tuple[int, int]:
        return tuple(self.teacher.model.patch_embed.grid_size)

    def split_entry(self, split: str) -> dict[str, Any]:
        """The dataset manifest's entry (count, fingerprint) for a split or for sources.beton."""
        return self.data["source_images"] if split == SOURCES_SPLIT else self.data["splits"][split]

    def identity(self) -> dict[str, Any]:
        """This run's provenance: what every shard of its cache shares (common.cache.format.provenance)."""
        t = self.teacher
        return provenance(
            teacher=t.name,
            weights_hash=t.weights_hash,
            random_weights=t.random_weights,
            preprocessing=t.preprocessing.attrs(),
            compute_dtype=self.compute_dtype,
            shard_size=self.cfg.shard_size,
            classes=self.data["classes"],
            corruptions=self.data["corruptions"],
            weights_source=t.weights_source,
            device_type=self.device.type,
            view=self.cfg.view,
            token_targets=self.extras,
            teacher_grid=self.teacher_grid if self.extras else (),
            teacher_module=t.module.name if t.module else None,
            teacher_module_sha256=t.module.sha256 if t.module else None,
            augmentation=self.view_settings(),
            teacher_spec=None if self.cfg.checkpoint or t.random_weights else self.cfg.teacher,
            teacher_run=t.run,
        )

    def view_settings(self) -> dict[str, Any] | None:
        """`--views K`: K, the seed of the draws and the augmentation settings the cache records (else None)."""
        if not self.cfg.views:
            return None
        return {"views": self.cfg.views, "view_seed": self.cfg.seed, **self.cfg.augmentation.attrs()}

    def shard_attrs(
        self, spec: ShardSpec, kind: str, head: LinearHead | None = None, tally: tuple[list, list] | None = None
    ) -> dict[str, Any]:
        """The attributes of one shard of this run (a logit shard names its head and the teacher's `tally`)."""
        head_hash = head.hash if head is not None else None
        split = self.split_entry(spec.split)
        return shard_attrs(spec, kind, self.identity(), split, head_hash, self.store_features, tally)
