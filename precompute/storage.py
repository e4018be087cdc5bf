"""What a cache will take on disk, printed before any work, and a refusal when the free disk cannot hold it."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from cdeit.common.cache import ShardSpec
from cdeit.common.console import console
from cdeit.common.errors import CdeitError

if TYPE_CHECKING:
    from cdeit.precompute.run import Run


def row_bytes(run: Run) -> dict[str, int]:
    """Bytes per row of each array of the final logit shards."""
    from cdeit.common.tokens import TARGET_GRID

    dim, cells = run.teacher.num_features, TARGET_GRID * TARGET_GRID
    sizes = {"index": 8, "logits": 4 * len(run.data["classes"])}
    sizes |= {"source": 8} if run.clean else {}
    sizes |= {"embedding": 2 * dim} if run.store_features else {}
    sizes |= {"patches": 2 * cells * dim} if "patches" in run.extras else {}
    sizes |= {"attention": 2 * cells} if "attention" in run.extras else {}
    return sizes


def storage_needed(run: Run, plan: list[ShardSpec]) -> tuple[int, int]:
    """(bytes of the final cache, peak bytes while it is built) for `plan`.

    Pass 1 writes every feature shard (index, label, corruption, float16 features and extras) before pass 2
    turns them one by one into logit shards, so the peak is the larger of the two sets plus one shard.
    """
    from cdeit.precompute.augmented import augmented_bytes

    rows, sizes = sum(s.count for s in plan), row_bytes(run)
    overhead = 64 * 1024 * len(plan)  # HDF5 headers and attributes, generously
    final = sum(sizes.values())
    work = 24 + (8 if run.clean else 0) + 2 * run.teacher.num_features + sum(sizes[k] for k in run.extras)
    biggest = max((s.count for s in plan), default=0) * max(final, work)
    views = augmented_bytes(run, plan)  # --views K: written after the logits, kept beside them
    return rows * final + overhead + views, rows * max(final, work) + biggest + overhead + views


def check_storage(run: Run, plan: list[ShardSpec]) -> None:
    """Print what the cache will take and refuse, in one sentence, a choice that does not fit the free disk."""
    final, peak = storage_needed(run, plan)
    rows, sizes = sum(s.count for s in plan), row_bytes(run)
    where = run.cfg.out
    while not where.exists() and where != where.parent:
        where = where.parent
    present = sum(p.stat().st_size for p in run.cfg.out.rglob("*") if p.is_file()) if run.cfg.out.is_dir() else 0
    free = shutil.disk_usage(where).free
    parts = ", ".join(f"{k} {_size(v)}" for k, v in sizes.items())
    console.print(
        f"storage: {rows:,} rows x {_size(sum(sizes.values()))} ({parts}) = {_size(final)} for the cache, "
        f"up to {_size(peak)} while it is built; {_size(free)} free on {where}."
    )
    if run.cfg.views:
        from cdeit.precompute.augmented import augmentation_line

        console.print(augmentation_line(run, sum(s.count for s in plan if s.split == "train")))
    if peak - present > free:
        raise CdeitError(
            f"the cache needs up to {_size(peak)} while it is built but only {_size(free)} are free on {where}; "
            "free space, choose another --out, or store fewer --targets (patches take the most)."
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
