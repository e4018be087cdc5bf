"""`cdeit precompute-teacher`: teacher features (pass 1), the linear head (paper 4.1), logits (pass 2), one cache.

Flow: pass 1 runs the frozen backbone on every image of the shards this process owns and writes float16
pre-logit features to CACHE/features/ shard by shard; the head is then given (`--head FILE|none`), reused from
the cache, or fitted on the train features with selection on val; pass 2 turns each feature shard into the
final logit shard and drops the feature shard. A killed run resumes at the first missing shard of either pass.
docs/precompute.md explains slices, torchrun and determinism.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cdeit.common.cache import SOURCES_SPLIT, TARGETS, plan_shards, write_manifest
from cdeit.common.console import console
from cdeit.common.dataset import SPLITS
from cdeit.common.device import max_workers, resolve_device
from cdeit.common.distributed import barrier, dist_env, process_group
from cdeit.common.errors import CdeitError
from cdeit.common.head import HeadFit
from cdeit.common.teacher import Teacher
from cdeit.common.tokens import TOKEN_TARGETS
from cdeit.precompute.augmented import pass_augmented
from cdeit.precompute.config import PrecomputeConfig
from cdeit.precompute.head_stage import fit_if_ready, given_head, reusable_head
from cdeit.precompute.job import PrecomputeJob
from cdeit.precompute.passes import pass_features, pass_logits
from cdeit.precompute.records import calibration, throughput
from cdeit.precompute.report import joined_accuracy, report
from cdeit.precompute.resume import check_out_dir, manifest_sums
from cdeit.precompute.storage import check_storage

if TYPE_CHECKING:
    import torch

BATCH_CUDA, BATCH_CPU = 1024, 64


def precompute_teacher(cfg: PrecomputeConfig) -> dict[str, Any]:
    """Run both passes into `cfg.out` and return a summary (images, seconds, images/s, accuracy, manifest)."""
    started = time.perf_counter()
    job = prepare_job(cfg)
    plan = plan_shards({s: job.split_entry(s)["count"] for s in job.cache_splits}, cfg.shard_size)
    given = given_head(job)
    with process_group(job.env, timeout=datetime.timedelta(hours=12)):  # ranks wait at barriers for the slowest
        if job.env.rank == 0:
            check_storage(job, plan)
            check_out_dir(job, given)
        barrier(job.env)
        job.sums = manifest_sums(cfg.out)
        head = given or reusable_head(job)
        images, seconds = pass_features(job, plan, head)
        views = (0, 0.0)
        if head is not None and cfg.views:  # the head is known: every rank renders the views of its own shards
            views = pass_augmented(job, plan, head, job.env.rank, job.env.world)
        barrier(job.env)
    summary = {"images": images, "features_seconds": seconds, "images_per_s": images / seconds if seconds else 0.0}
    summary |= {"device": str(job.device), "batch_size": job.batch_size, "compute_dtype": job.compute_dtype}
    summary |= {"views": views[0], "views_seconds": views[1]} if cfg.views else {}
    if job.env.rank != 0:
        return summary
    fitted, head = head is None, head or fit_if_ready(job, plan)
    logits = pass_logits(job, plan, head) if head is not None else (0, 0.0)
    if fitted and head is not None and cfg.views:  # a head fitted just now: this rank renders the slice's views
        summary["views"], summary["views_seconds"] = pass_augmented(job, plan, head)
    measured = throughput(job, {"features": (images, seconds), "logits": logits})  # rank 0: one device's rate
    manifest = write_manifest(cfg.out, fallback=job.identity(), records={"throughput": measured})
    fitted_t = calibration(job, manifest) if head is not None else None
    if fitted_t is not None:
        manifest = write_manifest(cfg.out, fallback=job.identity(), records={"calibration": fitted_t})
    summary |= {"seconds": time.perf_counter() - started, "complete": manifest["complete"], "manifest": manifest}
    summary["accuracy"] = {s: v["accuracy"] for s, v in manifest["splits"].items()}
    if job.clean and manifest["complete"]:
        summary["accuracy_joined"] = joined_accuracy(job)
    report(job, summary, head)
    return summary


def prepare_job(cfg: PrecomputeConfig) -> PrecomputeJob:
    """Check the options against the dataset, pick the device and batch size, and build the teacher."""
    from cdeit.common.dataset import load_manifest, split_info
    from cdeit.common.teacher import build_teacher

    data = load_manifest(cfg.data)
    _check_options(cfg)
    for split in ("train", "val") if cfg.view == "clean" and cfg.head is None else cfg.splits:
        split_info(data, split, cfg.data)
    if cfg.view == "clean":
        _check_sources(data, cfg.data)
    from cdeit.common.dataset import check_betons

    check_betons(cfg.data, data, (*cfg.splits, *((SOURCES_SPLIT,) if cfg.view == "clean" else ())))
    env = dist_env()
    device = resolve_device(cfg.device, env.local_rank)
    batch = resolve_batch_size(cfg, device)
    teacher = build_teacher(cfg.teacher, cfg.checkpoint, cfg.random_weights, cfg.seed, cfg.teacher_module)
    if set(TOKEN_TARGETS) & set(cfg.targets):
        from cdeit.common.tokens import check_vit

        check_vit(teacher.model, cfg.teacher)
    teacher.model.to(device)
    if device.type == "cuda":
        teacher.model.to(memory_format=_channels_last())
    if teacher.random_weights and env.rank == 0:
        random_weights_banner(teacher)
    return PrecomputeJob(
        cfg,
        data,
        teacher,
        device,
        batch,
        env,
        HeadFit(epochs=cfg.head_epochs, lr=cfg.head_lr, seed=cfg.seed, standardize=cfg.head_standardize),
    )


INT32 = 2**31 - 1  # the largest shard, batch or count an HDF5 attribute and a torch index hold safely


def _check_options(cfg: PrecomputeConfig) -> None:
    if cfg.view not in ("same", "clean"):
        raise CdeitError(f"--view {cfg.view!r} is unknown; choose same (the paper's) or clean.")
    unknown = [t for t in cfg.targets if t not in TARGETS]
    if unknown:
        raise CdeitError(f"--targets {unknown[0]!r} is unknown; choose from {','.join(TARGETS)}.")
    if "logits" not in cfg.targets:
        raise CdeitError(f"--targets {','.join(cfg.targets)} lacks logits, which every cache holds; add logits.")
    if cfg.view == "clean" and tuple(cfg.splits) != SPLITS:
        raise CdeitError(
            "--splits does not apply to --view clean, whose rows are the dataset's source photographs (sources.beton) "
            "and serve every split; drop --splits."
        )
    if not cfg.splits:
        raise CdeitError("--splits is empty; name at least one of train, val, test.")
    if cfg.num_shards < 1 or not 0 <= cfg.shard_index < cfg.num_shards:
        raise CdeitError(
            f"--shard-index must be in 0..{cfg.num_shards - 1} for --num-shards {cfg.num_shards}, "
            f"got {cfg.shard_index}."
        )
    if cfg.views < 0:
        raise CdeitError(f"--views must be 0 (none) or a number of augmented views per train sample, not {cfg.views}.")
    if cfg.views and (cfg.view != "same" or "train" not in cfg.splits):
        raise CdeitError(
            "--views K renders augmented views of the train split as the teacher sees them; use it with --view same "
            "and a --splits that includes train."
        )
    if cfg.views:
        cfg.augmentation.check()
    bounds = (("--shard-size", cfg.shard_size, 1, INT32), ("--batch-size", cfg.batch_size, 1, INT32),
              ("--workers", cfg.workers, 1, max_workers()), ("--seed", cfg.seed, 0, 2**63 - 1),
              ("--head-epochs", cfg.head_epochs, 1, 10**6), ("--views", cfg.views, 0, 1024),
              ("--num-shards", cfg.num_shards, 1, 10**6))  # fmt: skip
    for name, value, low, high in bounds:
        if value is not None and not low <= value <= high:
            raise CdeitError(f"{name} must be in {low}..{high:,}, got {value}.")
    if not 0 < cfg.head_lr < float("inf"):
        raise CdeitError(f"--head-lr must be positive, got {cfg.head_lr}.")
    if cfg.head is None and cfg.view == "same" and not {"train", "val"} <= set(cfg.splits):
        raise CdeitError(
            "fitting the head needs the train and val splits; add them to --splits or pass --head FILE|none."
        )


def _check_sources(data: dict[str, Any], data_dir: Path) -> None:
    from cdeit.common.dataset import SOURCES_FILE

    if "source_images" not in data or not (Path(data_dir) / SOURCES_FILE).is_file():
        raise CdeitError(
            f"dataset {data_dir} has no {SOURCES_FILE} (one clean image per source photograph), which --view clean "
            "needs; rebuild it with the current `cdeit data prepare`."
        )


def _channels_last() -> Any:
    import torch

    return torch.channels_last


def resolve_batch_size(cfg: PrecomputeConfig, device: torch.device) -> int:
    """The batch size; shards must hold whole batches so no batch straddles two shards."""
    batch = cfg.batch_size or (BATCH_CUDA if device.type == "cuda" else BATCH_CPU)
    if batch < 1:
        raise CdeitError(f"--batch-size must be at least 1, got {batch}.")
    batch = min(batch, cfg.shard_size)
    if cfg.shard_size % batch:
        raise CdeitError(
            f"--shard-size {cfg.shard_size} is not a multiple of --batch-size {batch}; "
            f"choose a batch size that divides it (e.g. {np.gcd(cfg.shard_size, batch)})."
        )
    return batch


def random_weights_banner(teacher: Teacher) -> None:
    from rich.panel import Panel

    text = (
        f"[bold]RANDOM WEIGHTS[/]: {teacher.name} is untrained ({teacher.weights_source}). Its logits are noise: "
        "fine for benchmarks and tests, useless for distillation. The cache records random_weights=true."
    )
    console.print(Panel(text, style="bold yellow", border_style="yellow"))
