"""What a cache will take on disk, printed before any work, and a refusal when the free disk cannot hold it."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from cdeit.common.cache import ShardSpec
from cdeit.common.console import console
from cdeit.common.errors import CdeitError

if TYPE_CHECKING:
    from cdeit.precompute.job import PrecomputeJob


def row_bytes(job: PrecomputeJob) -> dict[str, int]:
    """Bytes per row of each array of the final logit shards."""
    from cdeit.common.tokens import TARGET_GRID

    dim, cells = job.teacher.num_features, TARGET_GRID * TARGET_GRID
    sizes = {"index": 8, "logits": 4 * len(job.data["classes"])}
    sizes |= {"source": 8} if job.clean else {}
    sizes |= {"embedding": 2 * dim} if job.store_features else {}
    sizes |= {"patches": 2 * cells * dim} if "patches" in job.extras else {}
    sizes |= {"attention": 2 * cells} if "attention" in job.extras else {}
    return sizes


def storage_needed(job: PrecomputeJob, plan: list[ShardSpec]) -> tuple[int, int]:
    """(bytes of the final cache, peak bytes while it is built) for `plan`.

    Pass 1 writes every feature shard (index, label, corruption, float16 features and extras) before pass 2
    turns them one by one into logit shards, so the peak is the larger of the two sets plus one shard.
    """
    rows, sizes = sum(s.count for s in plan), row_bytes(job)
    overhead = 64 * 1024 * len(plan)  # HDF5 headers and attributes, generously
    final = sum(sizes.values())
    work = 24 + (8 if job.clean else 0) + 2 * job.teacher.num_features + sum(sizes[k] for k in job.extras)
    biggest = max((s.count for s in plan), default=0) * max(final, work)
    views = augmented_bytes(job, plan)  # --views K: written after the logits, kept beside them
    return rows * final + overhead + views, rows * max(final, work) + biggest + overhead + views


def check_storage(job: PrecomputeJob, plan: list[ShardSpec]) -> None:
    """Print what the cache will take and refuse, in one sentence, a choice that does not fit the free disk."""
    final, peak = storage_needed(job, plan)
    rows, sizes = sum(s.count for s in plan), row_bytes(job)
    where = job.cfg.out
    while not where.exists() and where != where.parent:
        where = where.parent
    present = sum(p.stat().st_size for p in job.cfg.out.rglob("*") if p.is_file()) if job.cfg.out.is_dir() else 0
    free = shutil.disk_usage(where).free
    parts = ", ".join(f"{k} {_size(v)}" for k, v in sizes.items())
    console.print(
        f"storage: {rows:,} rows x {_size(sum(sizes.values()))} ({parts}) = {_size(final)} for the cache, "
        f"up to {_size(peak)} while it is built; {_size(free)} free on {where}."
    )
    if job.cfg.views:
        console.print(augmentation_line(job, sum(s.count for s in plan if s.split == "train")))
    if peak - present > free:
        raise CdeitError(
            f"the cache needs up to {_size(peak)} while it is built but only {_size(free)} are free on {where}; "
            "free space, choose another --out, or store fewer --targets (patches take the most)."
        )


# --------------------------------------------------------------------------------------------- --views K


def view_bytes(job: PrecomputeJob) -> int:
    """Bytes per stored view: float32 logits, partner, mode, weight, CutMix box, two erasing boxes, checksum."""
    return 4 * len(job.data["classes"]) + 8 + 1 + 4 + 2 * 4 + 2 * 2 * 4 + 8


def augmented_bytes(job: PrecomputeJob, plan: list[ShardSpec]) -> int:
    """Bytes of every augmented shard of `plan` (train rows x K x view bytes, the index, HDF5 headers)."""
    rows = sum(s.count for s in plan if s.split == "train")
    return rows * (job.cfg.views * view_bytes(job) + 8) + 64 * 1024 * len(plan) if job.cfg.views else 0


def augmentation_line(job: PrecomputeJob, rows: int) -> str:
    """What `--views K` adds, stated before any work: rows x K x bytes, and K teacher passes over train."""
    aug = job.cfg.augmentation
    per_view, k = view_bytes(job), job.cfg.views
    return (
        f"views: {rows:,} train rows x {k} views x {per_view} B = {_size(rows * k * per_view)}; the teacher runs "
        f"{rows * k:,} more forwards ({k} passes over train, {k}x the paper's train pass); erasing "
        f"{aug.erasing_prob:g}, mixup {aug.mixup_prob:g} (alpha {aug.mixup_alpha:g}), cutmix {aug.cutmix_prob:g} "
        f"(alpha {aug.cutmix_alpha:g}), seed {job.cfg.seed}."
    )


def _size(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number readable."""
    if n < 1024:
        return f"{n:,.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:,.1f} {unit}"
