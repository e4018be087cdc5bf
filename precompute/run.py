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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cdeit.common.cache import SOURCES_SPLIT, TARGETS, ShardSpec, plan_shards, provenance, shard_attrs, write_manifest
from cdeit.common.console import console
from cdeit.common.dataset import SPLITS
from cdeit.common.device import resolve_device
from cdeit.common.distributed import DistEnv, barrier, dist_env, process_group
from cdeit.common.errors import CdeitError
from cdeit.common.head import HeadFit, LinearHead
from cdeit.common.teacher import Teacher
from cdeit.common.tokens import TOKEN_TARGETS
from cdeit.precompute.augmented import pass_augmented
from cdeit.precompute.config import PrecomputeConfig
from cdeit.precompute.head_stage import fit_if_ready, given_head, reusable_head
from cdeit.precompute.passes import pass_features, pass_logits
from cdeit.precompute.report import joined_accuracy, report
from cdeit.precompute.resume import check_out_dir, manifest_sums
from cdeit.precompute.storage import check_storage

if TYPE_CHECKING:
    import torch

BATCH_CUDA, BATCH_CPU = 1024, 64


@dataclass
class Run:
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


# --------------------------------------------------------------------------------------------- entry point


def precompute_teacher(cfg: PrecomputeConfig) -> dict[str, Any]:
    """Run both passes into `cfg.out` and return a summary (images, seconds, images/s, accuracy, manifest)."""
    started = time.perf_counter()
    run = prepare_run(cfg)
    plan = plan_shards({s: run.split_entry(s)["count"] for s in run.cache_splits}, cfg.shard_size)
    given = given_head(run)
    with process_group(run.env, timeout=datetime.timedelta(hours=12)):  # ranks wait at barriers for the slowest
        if run.env.rank == 0:
            check_storage(run, plan)
            check_out_dir(run, given)
        barrier(run.env)
        run.sums = manifest_sums(cfg.out)
        head = given or reusable_head(run)
        images, seconds = pass_features(run, plan, head)
        views = (0, 0.0)
        if head is not None and cfg.views:  # the head is known: every rank renders the views of its own shards
            views = pass_augmented(run, plan, head, run.env.rank, run.env.world)
        barrier(run.env)
    summary = {"images": images, "features_seconds": seconds, "images_per_s": images / seconds if seconds else 0.0}
    summary |= {"device": str(run.device), "batch_size": run.batch_size, "compute_dtype": run.compute_dtype}
    summary |= {"views": views[0], "views_seconds": views[1]} if cfg.views else {}
    if run.env.rank != 0:
        return summary
    fitted, head = head is None, head or fit_if_ready(run, plan)
    if head is not None:
        pass_logits(run, plan, head)
    if fitted and head is not None and cfg.views:  # a head fitted just now: this rank renders the slice's views
        summary["views"], summary["views_seconds"] = pass_augmented(run, plan, head)
    manifest = write_manifest(cfg.out, fallback=run.identity())
    summary |= {"seconds": time.perf_counter() - started, "complete": manifest["complete"], "manifest": manifest}
    summary["accuracy"] = {s: v["accuracy"] for s, v in manifest["splits"].items()}
    if run.clean and manifest["complete"]:
        summary["accuracy_joined"] = joined_accuracy(run)
    report(run, summary, head)
    return summary


def prepare_run(cfg: PrecomputeConfig) -> Run:
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
    return Run(
        cfg,
        data,
        teacher,
        device,
        batch,
        env,
        HeadFit(epochs=cfg.head_epochs, lr=cfg.head_lr, seed=cfg.seed, standardize=cfg.head_standardize),
    )


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
    for name, value, low in (("--shard-size", cfg.shard_size, 1), ("--batch-size", cfg.batch_size, 1),
                             ("--workers", cfg.workers, 1), ("--seed", cfg.seed, 0)):  # fmt: skip
        if value is not None and value < low:
            raise CdeitError(f"{name} must be at least {low}, got {value}.")
    if cfg.head_epochs < 1:
        raise CdeitError(f"--head-epochs must be at least 1, got {cfg.head_epochs}.")
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
