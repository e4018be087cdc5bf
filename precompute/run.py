"""`cdeit precompute-teacher`: teacher features (pass 1), the linear head (paper 4.1), logits (pass 2), one cache.

Flow: pass 1 runs the frozen backbone on every image of the shards this process owns and writes float16
pre-logit features to CACHE/features/ shard by shard; the head is then given (`--head FILE|none`), reused from
the cache, or fitted on the train features with selection on val; pass 2 turns each feature shard into the
final logit shard and drops the feature shard. A killed run resumes at the first missing shard of either pass.
docs/precompute.md explains slices, torchrun and determinism.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cdeit.common.cache import (
    CACHE_FORMAT,
    FEATURES,
    FEATURES_DIR,
    FORMAT_VERSION,
    HEAD_FILE,
    IDENTITY_KEYS,
    INFO_KEYS,
    LOGITS,
    MANIFEST,
    SOURCES_SPLIT,
    TARGETS,
    ShardSpec,
    build_manifest,
    cache_view,
    plan_shards,
    read_arrays,
    read_cache_manifest,
    read_head_meta,
    sha256_file,
    shard_problem,
    token_targets_of,
    write_manifest,
    write_shard,
)
from cdeit.common.console import console, out, progress_bar
from cdeit.common.dataset import SPLITS
from cdeit.common.device import resolve_device
from cdeit.common.errors import CdeitError
from cdeit.precompute.config import PrecomputeConfig
from cdeit.precompute.distributed import DistEnv, assign_shards, barrier, dist_env, process_group
from cdeit.precompute.head import HeadFit, LinearHead, fit_head, fit_settings, load_head, save_head
from cdeit.precompute.teacher import Teacher

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
        return tuple(t for t in TARGETS if t in self.cfg.targets and t in ("patches", "attention"))

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
        """The attributes every shard of this cache shares (IDENTITY_KEYS) plus informational provenance."""
        from cdeit.common import __version__

        t = self.teacher
        values = {
            "teacher": t.name,
            "weights_hash": t.weights_hash,
            "random_weights": t.random_weights,
            **t.preprocessing.attrs(),
            "compute_dtype": self.compute_dtype,
            "shard_size": self.cfg.shard_size,
            "classes": list(self.data["classes"]),
            "corruptions": list(self.data["corruptions"]),
            "weights_source": t.weights_source,
            "device_type": self.device.type,
            "tool_version": __version__,
        }
        if self.clean or self.extras:  # the paper's cache (same view, logits [+ features]) carries none of these
            values |= {"view": self.cfg.view, "token_targets": list(self.extras)}
        if self.extras:
            from cdeit.common.tokens import TARGET_GRID

            values |= {"target_grid": [TARGET_GRID, TARGET_GRID], "teacher_grid": list(self.teacher_grid)}
        return json.loads(json.dumps(values))  # tuples -> lists, as they come back from HDF5 and JSON

    def shard_attrs(self, spec: ShardSpec, kind: str, head: LinearHead | None = None) -> dict[str, Any]:
        split = self.split_entry(spec.split)
        attrs = {"format": CACHE_FORMAT, "format_version": FORMAT_VERSION, "kind": kind}
        attrs |= {"split": spec.split, "shard": spec.shard, "start": spec.start, "stop": spec.stop}
        attrs |= {"split_count": split["count"], "data_fingerprint": split["fingerprint"], **self.identity()}
        if kind == LOGITS:
            assert head is not None
            return attrs | {"head_hash": head.hash, "store_features": self.store_features}
        return attrs | {"feature_dtype": "float16"}


# --------------------------------------------------------------------------------------------- entry point


def precompute_teacher(cfg: PrecomputeConfig) -> dict[str, Any]:
    """Run both passes into `cfg.out` and return a summary (images, seconds, images/s, accuracy, manifest)."""
    started = time.perf_counter()
    run = prepare_run(cfg)
    plan = plan_shards({s: run.split_entry(s)["count"] for s in run.cache_splits}, cfg.shard_size)
    given = given_head(run)
    with process_group(run.env):
        if run.env.rank == 0:
            check_storage(run, plan)
            check_out_dir(run, given)
        barrier(run.env)
        run.sums = _manifest_sums(cfg.out)
        head = given or reusable_head(run)
        images, seconds = pass_features(run, plan, head)
        barrier(run.env)
    summary = {"images": images, "features_seconds": seconds, "images_per_s": images / seconds if seconds else 0.0}
    summary |= {"device": str(run.device), "batch_size": run.batch_size, "compute_dtype": run.compute_dtype}
    if run.env.rank != 0:
        return summary
    head = head or fit_if_ready(run, plan)
    if head is not None:
        pass_logits(run, plan, head)
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
    from cdeit.precompute.teacher import build_teacher

    data = load_manifest(cfg.data)
    _check_options(cfg)
    for split in ("train", "val") if cfg.view == "clean" and cfg.head is None else cfg.splits:
        split_info(data, split, cfg.data)
    if cfg.view == "clean":
        _check_sources(data, cfg.data)
    env = dist_env()
    device = resolve_device(cfg.device, env.local_rank)
    batch = resolve_batch_size(cfg, device)
    teacher = build_teacher(cfg.teacher, cfg.checkpoint, cfg.random_weights, cfg.seed)
    if {"patches", "attention"} & set(cfg.targets):
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
    if cfg.head_epochs < 1:
        raise CdeitError(f"--head-epochs must be at least 1, got {cfg.head_epochs}.")
    if not cfg.head_lr > 0:
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


# --------------------------------------------------------------------------------------------- storage


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
    rows, sizes = sum(s.count for s in plan), row_bytes(run)
    overhead = 64 * 1024 * len(plan)  # HDF5 headers and attributes, generously
    final = sum(sizes.values())
    work = 24 + (8 if run.clean else 0) + 2 * run.teacher.num_features + sum(sizes[k] for k in run.extras)
    biggest = max((s.count for s in plan), default=0) * max(final, work)
    return rows * final + overhead, rows * max(final, work) + biggest + overhead


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


# --------------------------------------------------------------------------------------------- the output directory


def check_out_dir(run: Run, given: LinearHead | None) -> None:
    """Resume silently into a cache of the same run; refuse one of another teacher, data or head."""
    from cdeit.common.atomic import remove_stale_tmp

    path = run.cfg.out
    if path.exists() and not path.is_dir():
        raise CdeitError(f"--out {path} is a file; pass a directory for the cache.")
    path.mkdir(parents=True, exist_ok=True)
    for d in (path, path / FEATURES_DIR):
        if d.is_dir():
            remove_stale_tmp(d)
    has_shards = any(path.glob("*.h5")) or any((path / FEATURES_DIR).glob("*.h5"))
    if (path / MANIFEST).is_file() or has_shards:
        existing = read_cache_manifest(path) if (path / MANIFEST).is_file() else build_manifest(path)
        _check_same_run(run, existing, given)
    elif any(path.iterdir()):
        raise CdeitError(f"--out {path} is not empty and holds no teacher cache; choose a new or empty directory.")
    else:
        write_manifest(path, fallback=run.identity())


def _check_same_run(run: Run, existing: dict[str, Any], given: LinearHead | None) -> None:
    path, have, want = run.cfg.out, existing["provenance"], run.identity()
    hint = "choose another --out, or delete it to start over"
    for key in IDENTITY_KEYS:
        if have.get(key) is not None and have[key] != want[key]:
            raise CdeitError(f"{path} holds a cache with {key} {have[key]!r}, but this run has {want[key]!r}; {hint}.")
    if have.get("store_features") is not None and have["store_features"] != run.store_features:
        raise CdeitError(f"{path} holds a cache with store_features={have['store_features']}; {hint} or match it.")
    if (view := cache_view(have)) != run.cfg.view:
        raise CdeitError(f"{path} holds a {view}-view cache, but this run has --view {run.cfg.view}; {hint}.")
    if token_targets_of(have) != list(run.extras):
        held = ",".join(token_targets_of(have)) or "none"
        raise CdeitError(f"{path} holds a cache with per-patch targets {held}, not {','.join(run.extras) or 'none'}; "
                         f"{hint} or pass the same --targets.")  # fmt: skip
    for split in run.cache_splits:
        cached = existing["splits"].get(split, {}).get("fingerprint")
        if cached and cached != run.split_entry(split)["fingerprint"]:
            raise CdeitError(
                f"{path} was computed for other data (split {split} fingerprint {cached[:19]}...); {hint}."
            )
    meta = read_head_meta(path)
    if meta is None:
        return
    if given is not None and meta["hash"] != given.hash:
        raise CdeitError(f"{path} holds logits of head {meta['hash'][:19]}..., not of the head you passed; {hint}.")
    if given is None and not _is_reusable(meta, run):
        raise CdeitError(
            f"{path} holds a {meta.get('source', 'given')} head with other settings than this run's fit; "
            f"pass --head {path / HEAD_FILE} to resume with it, or {hint}."
        )


def _is_reusable(meta: dict[str, Any], run: Run) -> bool:
    return meta.get("source") == "fitted" and meta.get("fit") == _fit_settings(run)


def _fit_settings(run: Run) -> dict[str, Any]:
    """What decides the fitted head; a clean-view head is fitted on the clean features of the train sources."""
    fingerprints = {s: e["fingerprint"] for s, e in run.data["splits"].items()}
    settings = fit_settings(run.fit, run.teacher, fingerprints)
    if run.clean:
        settings |= {"view": "clean", "sources": run.split_entry(SOURCES_SPLIT)["fingerprint"]}
    return settings


def _manifest_sums(path: Path) -> dict[str, str]:
    try:
        manifest = read_cache_manifest(path)
    except CdeitError:
        return {}
    return {e["file"]: e["sha256"] for e in manifest["shards"] + manifest["feature_shards"]}


# --------------------------------------------------------------------------------------------- the head


def given_head(run: Run) -> LinearHead | None:
    """The head named by --head: a file, the teacher's own classifier (`none`), or None to fit one."""
    from cdeit.precompute.teacher import own_head

    choice, classes = run.cfg.head, len(run.data["classes"])
    if choice is None:
        return None
    if choice.lower() == "none":
        tensors = own_head(run.teacher)
        if tensors is None or tensors["weight"].shape[0] != classes:
            outputs = run.teacher.model.num_classes if run.teacher.head_loaded else "no trained"
            raise CdeitError(
                f"--head none uses the teacher's own classifier, but {run.teacher.name} has {outputs} outputs "
                f"for a dataset of {classes} classes; drop --head to fit a {classes}-way head (paper 4.1)."
            )
        return LinearHead(tensors["weight"], tensors["bias"], _head_meta(run, "teacher"))
    return load_head(Path(choice), run.teacher, classes)


def reusable_head(run: Run) -> LinearHead | None:
    """The head a previous run fitted into this cache with the same settings (resume), if any."""
    meta = read_head_meta(run.cfg.out)
    if meta is None or not _is_reusable(meta, run):
        return None
    return load_head(run.cfg.out / HEAD_FILE, run.teacher, len(run.data["classes"]))


def _head_meta(run: Run, source: str) -> dict[str, Any]:
    t = run.teacher
    return {"source": source, "teacher": t.name, "weights_hash": t.weights_hash, "classes": list(run.data["classes"])}


def fit_if_ready(run: Run, plan: list[ShardSpec]) -> LinearHead | None:
    """Fit the head when the features of every train and val shard are here (else a slice: return None)."""
    need = plan if run.clean else [s for s in plan if s.split in ("train", "val")]
    if not all(s.path(run.cfg.out, FEATURES).is_file() for s in need):
        return None
    if run.clean:
        train, val = _source_features(run, need)
    else:
        train, val = (_split_features(run, [s for s in need if s.split == split]) for split in ("train", "val"))
    console.print(f"fitting the {len(run.data['classes'])}-way head on {len(train[1]):,} train features ...")
    weight, bias, result = fit_head(train, val, len(run.data["classes"]), run.fit, run.device)
    meta = _head_meta(run, "fitted") | {"fit": _fit_settings(run), "result": result}
    console.print(
        f"head fitted: val accuracy {result['val_accuracy']:.2%} at epoch {result['best_epoch']}/{run.fit.epochs}"
    )
    return LinearHead(weight, bias, meta | {"device_type": run.device.type})


def _source_features(run: Run, specs: list[ShardSpec]) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Clean view: (features, labels) of the source photographs used in train, and of those used in val."""
    import torch

    from cdeit.common.dataset import beton_path, read_split

    arrays = [read_arrays(s.path(run.cfg.out, FEATURES), ("features", "label", "source")) for s in specs]
    features, labels, source = (np.concatenate([a[k] for a in arrays]) for k in ("features", "label", "source"))
    parts = []
    for split in ("train", "val"):
        used = np.isin(source, read_split(beton_path(run.cfg.data, split), fields=("source",))["source"])
        parts.append((torch.from_numpy(features[used]), torch.from_numpy(labels[used])))
    return parts[0], parts[1]


def _split_features(run: Run, specs: list[ShardSpec]) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    arrays = [read_arrays(s.path(run.cfg.out, FEATURES), ("features", "label")) for s in specs]
    features = torch.from_numpy(np.concatenate([a["features"] for a in arrays]))
    return features, torch.from_numpy(np.concatenate([a["label"] for a in arrays]))


# --------------------------------------------------------------------------------------------- the two passes


def shard_complete(run: Run, spec: ShardSpec, kind: str, head: LinearHead | None = None) -> bool:
    """Whether the shard exists, matches this run and its manifest checksum; removes it when it does not."""
    path = spec.path(run.cfg.out, kind)
    if not path.is_file():
        return False
    expect = {k: v for k, v in run.shard_attrs(spec, kind, head).items() if k not in INFO_KEYS}
    problem = shard_problem(path, spec, kind, expect)
    rel = path.relative_to(run.cfg.out).as_posix()
    if problem is None and rel in run.sums and sha256_file(path) != run.sums[rel]:
        problem = f"{rel} changed since the manifest was written"
    if problem:
        console.print(f"[yellow]recomputing {rel}: {problem}.[/]")
        path.unlink()
    return problem is None


def pass_features(run: Run, plan: list[ShardSpec], head: LinearHead | None) -> tuple[int, float]:
    """Pass 1 over this process's shards that have neither logits nor features yet; returns (images, seconds)."""
    from cdeit.precompute.features import compute_feature_shards
    from cdeit.precompute.preprocess import DeviceResize

    cfg, env = run.cfg, run.env
    mine = assign_shards(plan, cfg.shard_index, cfg.num_shards, env.rank, env.world)
    todo = [
        s for s in mine if not (head and shard_complete(run, s, LOGITS, head)) and not shard_complete(run, s, FEATURES)
    ]
    if len(todo) < len(mine):
        console.print(f"resuming: {len(mine) - len(todo)} of {len(mine)} shards of this process are already done.")
    if not todo:
        return 0, 0.0
    resize = DeviceResize(run.teacher.preprocessing, run.device, channels_last=run.device.type == "cuda")
    workers = cfg.workers or min(8, os.cpu_count() or 1)
    start = time.perf_counter()
    with progress_bar("teacher features", sum(s.count for s in todo)) as advance:
        images = compute_feature_shards(
            run.teacher, resize, cfg.data, todo, cfg.out, run.shard_attrs, run.batch_size, run.device, workers, advance,
            extras=run.extras, with_source=run.clean,
        )  # fmt: skip
    return images, time.perf_counter() - start


def pass_logits(run: Run, plan: list[ShardSpec], head: LinearHead) -> None:
    """Pass 2: save the head, then turn every feature shard into its logit shard and drop the feature shard."""
    path = run.cfg.out / HEAD_FILE
    meta = read_head_meta(run.cfg.out)
    if meta is None or meta["hash"] != head.hash:
        save_head(path, head)
    todo = [s for s in plan if not shard_complete(run, s, LOGITS, head)]
    for spec in plan:
        if spec not in todo:
            spec.path(run.cfg.out, FEATURES).unlink(missing_ok=True)
    todo = [s for s in todo if s.path(run.cfg.out, FEATURES).is_file()]
    with progress_bar("teacher logits", sum(s.count for s in todo)) as advance:
        for spec in todo:
            write_logit_shard(run, spec, head)
            spec.path(run.cfg.out, FEATURES).unlink()
            advance(spec.count)
    features_dir = run.cfg.out / FEATURES_DIR
    if features_dir.is_dir() and not any(features_dir.iterdir()):
        features_dir.rmdir()


def write_logit_shard(run: Run, spec: ShardSpec, head: LinearHead) -> None:
    """logits = head(features) of one shard, with the teacher's correct answers counted per corruption type."""
    arrays = read_arrays(spec.path(run.cfg.out, FEATURES))
    logits = head.logits(arrays["features"])
    correct = logits.argmax(1) == arrays["label"]
    k = len(run.data["corruptions"])
    attrs = run.shard_attrs(spec, LOGITS, head)
    attrs["correct_by_corruption"] = (
        np.bincount(arrays["corruption"], weights=correct, minlength=k).astype(np.int64).tolist()
    )
    attrs["count_by_corruption"] = np.bincount(arrays["corruption"], minlength=k).astype(np.int64).tolist()
    out_arrays = {"index": arrays["index"], "logits": logits}
    if run.clean:  # rows keyed by source id
        out_arrays = {"index": arrays["index"], "source": arrays["source"], "logits": logits}
    if run.store_features:
        out_arrays["features"] = arrays["features"]
    out_arrays |= {k: arrays[k] for k in run.extras}
    write_shard(spec.path(run.cfg.out, LOGITS), out_arrays, attrs)


# --------------------------------------------------------------------------------------------- the summary


def report(run: Run, summary: dict[str, Any], head: LinearHead | None) -> None:
    """Print teacher accuracy per split and corruption type, then one line of images, seconds and images/s."""
    manifest, path = summary["manifest"], run.cfg.out
    if head is None:
        have = len(manifest["feature_shards"])
        console.print(
            f"[bold]{path}[/] holds the features of {have} shards (this slice); no head yet. Merge the slices with "
            "`cdeit cache merge ... --out MERGED`, then run this command on MERGED to fit the head and write "
            "the logits."
        )
    elif manifest["splits"]:
        out.print(accuracy_table(manifest))
    if summary.get("accuracy_joined"):
        joined = ", ".join(f"{s} {a:.2%}" for s, a in summary["accuracy_joined"].items())
        out.print(f"clean view: the teacher's accuracy on each split's samples, seeing their clean sources: {joined}")
    rate = f"{summary['images_per_s']:,.1f} images/s" if summary["images"] else "nothing to compute"
    state = "complete" if summary["complete"] else "incomplete"
    who = f"rank 0 of {run.env.world}: " if run.env.world > 1 else ""
    out.print(
        f"{who}{summary['images']:,} images in {summary['features_seconds']:.1f} s ({rate}) on {summary['device']}, "
        f"batch {summary['batch_size']}, {summary['compute_dtype']}; total {summary['seconds']:.1f} s; "
        f"cache {path} is {state}."
    )
    if run.teacher.random_weights:
        console.print("[bold yellow]the cache holds logits of a teacher with RANDOM WEIGHTS.[/]")


def joined_accuracy(run: Run) -> dict[str, float]:
    """Clean view: per split, how often the teacher is right about a sample when it sees that sample's clean source."""
    from cdeit.common.cache import load_teacher_logits
    from cdeit.common.dataset import beton_path, read_split

    result = {}
    for split in run.data["splits"]:
        logits = load_teacher_logits(run.cfg.out, run.cfg.data, split, "cpu", checksums=False)
        labels = read_split(beton_path(run.cfg.data, split), fields=("label",))["label"]
        result[split] = float((logits.argmax(1).numpy() == labels).mean()) if len(labels) else float("nan")
    return result


def accuracy_table(manifest: dict[str, Any]) -> Any:
    """Teacher accuracy: one row per corruption type (and all), one column per split."""
    from rich.table import Table

    splits = manifest["splits"]
    table = Table(title="teacher accuracy", title_justify="left")
    table.add_column("images")
    for split in splits:
        table.add_column(split, justify="right")
    rows = ["all", *manifest["dataset"]["corruptions"]]
    for row in rows:
        values = [
            splits[s]["accuracy"] if row == "all" else splits[s]["accuracy_by_corruption"].get(row) for s in splits
        ]
        table.add_row(row, *("-" if v is None else f"{v:.2%}" for v in values))
    return table
