"""The two passes: teacher features of this process's shards (pass 1), then the head's logits (pass 2).

Pass 1 runs the frozen backbone (precompute.features) and writes float16 feature shards to CACHE/features/;
pass 2 turns each feature shard into the final logit shard, counts the teacher's correct answers per
corruption type and drops the feature shard. Both skip shards a previous run completed (precompute.resume).
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

import numpy as np

from cdeit.common.cache import (
    FEATURES,
    FEATURES_DIR,
    HEAD_FILE,
    LOGITS,
    ShardSpec,
    read_arrays,
    read_head_meta,
    write_shard,
)
from cdeit.common.console import console, progress_bar
from cdeit.common.distributed import assign_shards
from cdeit.common.head import save_head
from cdeit.precompute.resume import shard_complete

if TYPE_CHECKING:
    from cdeit.common.head import LinearHead
    from cdeit.precompute.job import PrecomputeJob


def pass_features(job: PrecomputeJob, plan: list[ShardSpec], head: LinearHead | None) -> tuple[int, float]:
    """Pass 1 over this process's shards that have neither logits nor features yet; returns (images, seconds)."""
    from cdeit.common.preprocess import DeviceResize
    from cdeit.precompute.features import compute_feature_shards

    cfg, env = job.cfg, job.env
    mine = assign_shards(plan, cfg.shard_index, cfg.num_shards, env.rank, env.world)
    todo = [
        s for s in mine if not (head and shard_complete(job, s, LOGITS, head)) and not shard_complete(job, s, FEATURES)
    ]
    if len(todo) < len(mine):
        console.print(f"resuming: {len(mine) - len(todo)} of {len(mine)} shards of this process are already done.")
    if not todo:
        return 0, 0.0
    resize = DeviceResize(job.teacher.preprocessing, job.device, channels_last=job.device.type == "cuda")
    workers = cfg.workers or min(8, os.cpu_count() or 1)
    start = time.perf_counter()
    with progress_bar("teacher features", sum(s.count for s in todo)) as advance:
        images = compute_feature_shards(
            job.teacher, resize, cfg.data, todo, cfg.out, job.shard_attrs, job.batch_size, job.device, workers, advance,
            extras=job.extras, with_source=job.clean,
        )  # fmt: skip
    return images, time.perf_counter() - start


def pass_logits(job: PrecomputeJob, plan: list[ShardSpec], head: LinearHead) -> tuple[int, float]:
    """Pass 2: save the head, then turn every feature shard into its logit shard and drop the feature shard;
    returns (images, seconds)."""
    path = job.cfg.out / HEAD_FILE
    meta = read_head_meta(job.cfg.out)
    if meta is None or meta["hash"] != head.hash:
        save_head(path, head)
    todo = [s for s in plan if not shard_complete(job, s, LOGITS, head)]
    for spec in plan:
        if spec not in todo:
            spec.path(job.cfg.out, FEATURES).unlink(missing_ok=True)
    todo = [s for s in todo if s.path(job.cfg.out, FEATURES).is_file()]
    start = time.perf_counter()
    with progress_bar("teacher logits", sum(s.count for s in todo)) as advance:
        for spec in todo:
            write_logit_shard(job, spec, head)
            spec.path(job.cfg.out, FEATURES).unlink()
            advance(spec.count)
    features_dir = job.cfg.out / FEATURES_DIR
    if features_dir.is_dir() and not any(features_dir.iterdir()):
        features_dir.rmdir()
    return sum(s.count for s in todo), time.perf_counter() - start


def write_logit_shard(job: PrecomputeJob, spec: ShardSpec, head: LinearHead) -> None:
    """logits = head(features) of one shard, with the teacher's correct answers counted per corruption type."""
    arrays = read_arrays(spec.path(job.cfg.out, FEATURES))
    logits = head.logits(arrays["features"])
    correct = logits.argmax(1) == arrays["label"]
    k = len(job.data["corruptions"])
    tally = (
        np.bincount(arrays["corruption"], weights=correct, minlength=k).astype(np.int64).tolist(),
        np.bincount(arrays["corruption"], minlength=k).astype(np.int64).tolist(),
    )
    out_arrays = {"index": arrays["index"], "logits": logits}
    if job.clean:  # rows keyed by source id
        out_arrays = {"index": arrays["index"], "source": arrays["source"], "logits": logits}
    if job.store_features:
        out_arrays["features"] = arrays["features"]
    out_arrays |= {k: arrays[k] for k in job.extras}
    write_shard(spec.path(job.cfg.out, LOGITS), out_arrays, job.shard_attrs(spec, LOGITS, head, tally))
