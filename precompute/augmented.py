"""Pass 3 of `--views K`: the teacher's logits on K augmented views of every train sample (common.views).

For each train shard of this slice: draw the views' parameters from (seed, i, k), render each view's 32px image
on the device, upsample it for the teacher as pass 1 does, and store the raw logits of the head with the
parameters and a checksum of the rendered image in CACHE/augmented/. A shard is written whole under a temporary
name, so a killed run resumes at the first missing shard, and slices merge like logit shards.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from cdeit.common.cache import AUGMENTED, ShardSpec, write_shard
from cdeit.common.console import console, progress_bar
from cdeit.common.distributed import assign_shards
from cdeit.common.views import (
    Augmentation,
    ViewParams,
    draw_views,
    image_hash,
    render_views,
    split_tensors,
    view_batches,
)
from cdeit.precompute.resume import shard_complete

if TYPE_CHECKING:
    import torch

    from cdeit.common.head import LinearHead
    from cdeit.common.preprocess import DeviceResize
    from cdeit.precompute.run import Run


def augmented_specs(run: Run, plan: list[ShardSpec], rank: int = 0, world: int = 1) -> list[ShardSpec]:
    """The train shards of this slice that process `rank` of `world` owns (the round-robin of pass 1)."""
    mine = assign_shards(plan, run.cfg.shard_index, run.cfg.num_shards, rank, world)
    return [s for s in mine if s.split == "train"]


def pass_augmented(
    run: Run, plan: list[ShardSpec], head: LinearHead, rank: int = 0, world: int = 1
) -> tuple[int, float]:
    """Write the augmented shard of every train shard this process owns that lacks one; returns (views, seconds).

    With the head known from the start, each rank of a torchrun renders its own shards; a head fitted at the end
    leaves them all to rank 0 (`rank`, `world` = 0, 1: the whole slice).
    """
    from cdeit.common.preprocess import DeviceResize

    specs = augmented_specs(run, plan, rank, world)
    todo = [s for s in specs if not shard_complete(run, s, AUGMENTED, head)]
    if len(todo) < len(specs):
        console.print(f"resuming: {len(specs) - len(todo)} of {len(specs)} augmented shards are already done.")
    if not todo:
        return 0, 0.0
    images = split_tensors(run.cfg.data, "train", run.device)["image"]  # (N, 3, 32, 32) uint8: partners are any
    resize = DeviceResize(run.teacher.preprocessing, run.device, channels_last=run.device.type == "cuda")
    start, k = time.perf_counter(), run.cfg.views
    with progress_bar("teacher views", sum(s.count for s in todo) * k, unit="views") as advance:
        for spec in todo:
            arrays = augmented_arrays(run, spec, head, images, resize, advance)
            write_shard(spec.path(run.cfg.out, AUGMENTED), arrays, run.shard_attrs(spec, AUGMENTED, head))
    return sum(s.count for s in todo) * k, time.perf_counter() - start


def augmented_arrays(
    run: Run, spec: ShardSpec, head: LinearHead, images: torch.Tensor, resize: DeviceResize, advance: object
) -> dict[str, np.ndarray]:
    """One shard's datasets: index (n,), view_logits (n, K, classes) float32, the view parameters, view_hash."""
    import torch

    from cdeit.precompute.features import extract_features

    cfg, n, k = run.cfg, spec.count, run.cfg.views
    index = np.arange(spec.start, spec.stop)
    params = draw_views(cfg.seed, index, k, len(images), cfg.augmentation)
    logits, hashes = [], []
    for rows, views, p in view_batches(params, index, run.batch_size):
        on_device = ViewParams(**{name: torch.from_numpy(np.asarray(v)).to(run.device) for name, v in vars(p).items()})
        rows_t, views_t = torch.from_numpy(rows).to(run.device), torch.from_numpy(views).to(run.device)
        rendered = render_views(images, rows_t, views_t, on_device, cfg.seed)  # (b, 3, 32, 32) uint8
        features = extract_features(run.teacher, resize, rendered, run.device.type == "cuda")
        logits.append(head.logits(features.cpu().numpy()))
        hashes.append(image_hash(rendered).cpu().numpy())
        advance(len(rows), info=f"shard {spec.name}")  # type: ignore[operator]
    out = {"index": index, "view_logits": np.concatenate(logits).reshape(n, k, -1)}
    return out | params.arrays() | {"view_hash": np.concatenate(hashes).reshape(n, k)}


def view_bytes(run: Run) -> int:
    """Bytes per stored view: float32 logits, partner, mode, weight, CutMix box, two erasing boxes, checksum."""
    return 4 * len(run.data["classes"]) + 8 + 1 + 4 + 2 * 4 + 2 * 2 * 4 + 8


def augmented_bytes(run: Run, plan: list[ShardSpec]) -> int:
    """Bytes of every augmented shard of `plan` (train rows x K x view bytes, the index, HDF5 headers)."""
    rows = sum(s.count for s in plan if s.split == "train")
    return rows * (run.cfg.views * view_bytes(run) + 8) + 64 * 1024 * len(plan) if run.cfg.views else 0


def augmentation_line(run: Run, rows: int) -> str:
    """What `--views K` adds, stated before any work: rows x K x bytes, and K teacher passes over train."""
    from cdeit.precompute.storage import _size

    aug: Augmentation = run.cfg.augmentation
    per_view, k = view_bytes(run), run.cfg.views
    return (
        f"views: {rows:,} train rows x {k} views x {per_view} B = {_size(rows * k * per_view)}; the teacher runs "
        f"{rows * k:,} more forwards ({k} passes over train, {k}x the paper's train pass); erasing "
        f"{aug.erasing_prob:g}, mixup {aug.mixup_prob:g} (alpha {aug.mixup_alpha:g}), cutmix {aug.cutmix_prob:g} "
        f"(alpha {aug.cutmix_alpha:g}), seed {run.cfg.seed}."
    )
