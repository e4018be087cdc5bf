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
    from cdeit.precompute.job import PrecomputeJob


def augmented_specs(job: PrecomputeJob, plan: list[ShardSpec], rank: int = 0, world: int = 1) -> list[ShardSpec]:
    """The train shards of this slice that process `rank` of `world` owns (the round-robin of pass 1)."""
    mine = assign_shards(plan, job.cfg.shard_index, job.cfg.num_shards, rank, world)
    return [s for s in mine if s.split == "train"]


def pass_augmented(
    job: PrecomputeJob, plan: list[ShardSpec], head: LinearHead, rank: int = 0, world: int = 1
) -> tuple[int, float]:
    """Write the augmented shard of every train shard this process owns that lacks one; returns (views, seconds).

    With the head known from the start, each rank of a torchrun renders its own shards; a head fitted at the end
    leaves them all to rank 0 (`rank`, `world` = 0, 1: the whole slice).
    """
    from cdeit.common.preprocess import DeviceResize

    specs = augmented_specs(job, plan, rank, world)
    todo = [s for s in specs if not shard_complete(job, s, AUGMENTED, head)]
    if len(todo) < len(specs):
        console.print(f"resuming: {len(specs) - len(todo)} of {len(specs)} augmented shards are already done.")
    if not todo:
        return 0, 0.0
    images = split_tensors(job.cfg.data, "train", job.device)["image"]  # (N, 3, 32, 32) uint8: partners are any
    resize = DeviceResize(job.teacher.preprocessing, job.device, channels_last=job.device.type == "cuda")
    start, k = time.perf_counter(), job.cfg.views
    with progress_bar("teacher views", sum(s.count for s in todo) * k, unit="views") as advance:
        for spec in todo:
            arrays = augmented_arrays(job, spec, head, images, resize, advance)
            write_shard(spec.path(job.cfg.out, AUGMENTED), arrays, job.shard_attrs(spec, AUGMENTED, head))
    return sum(s.count for s in todo) * k, time.perf_counter() - start


def augmented_arrays(
    job: PrecomputeJob, spec: ShardSpec, head: LinearHead, images: torch.Tensor, resize: DeviceResize, advance: object
) -> dict[str, np.ndarray]:
    """One shard's datasets: index (n,), view_logits (n, K, classes) float32, the view parameters, view_hash."""
    import torch

    from cdeit.precompute.features import extract_features

    cfg, n, k = job.cfg, spec.count, job.cfg.views
    index = np.arange(spec.start, spec.stop)
    params = draw_views(cfg.seed, index, k, len(images), cfg.augmentation, size=images.shape[-1])
    logits, hashes = [], []
    for rows, views, p in view_batches(params, index, job.batch_size):
        on_device = ViewParams(**{name: torch.from_numpy(np.asarray(v)).to(job.device) for name, v in vars(p).items()})
        rows_t, views_t = torch.from_numpy(rows).to(job.device), torch.from_numpy(views).to(job.device)
        rendered = render_views(images, rows_t, views_t, on_device, cfg.seed)  # (b, 3, 32, 32) uint8
        features = extract_features(job.teacher, resize, rendered, job.device.type == "cuda")
        logits.append(head.logits(features.cpu().numpy()))
        hashes.append(image_hash(rendered).cpu().numpy())
        advance(len(rows), info=f"shard {spec.name}")  # type: ignore[operator]
    out = {"index": index, "view_logits": np.concatenate(logits).reshape(n, k, -1)}
    return out | params.arrays() | {"view_hash": np.concatenate(hashes).reshape(n, k)}
