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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.cache import (
    CACHE_FORMAT,
    FEATURES,
    FEATURES_DIR,
    FORMAT_VERSION,
    HEAD_FILE,
    IDENTITY_KEYS,
    INFO_KEYS,
    LOGITS,
    MANIFEST,
    ShardSpec,
    build_manifest,
    plan_shards,
    read_arrays,
    read_cache_manifest,
    read_head_meta,
    sha256_file,
    shard_problem,
    write_manifest,
    write_shard,
)
from common.console import console, out, progress_bar
from common.dataset import SPLITS
from common.errors import CdeitError
from precompute.distributed import DistEnv, assign_shards, barrier, dist_env, process_group
from precompute.head import HeadFit, LinearHead, fit_head, fit_settings, load_head, save_head
from precompute.teacher import DEFAULT_TEACHER, Teacher

if TYPE_CHECKING:
    import torch

BATCH_CUDA, BATCH_CPU = 1024, 64


@dataclass
class PrecomputeConfig:
    """The options of `cdeit precompute-teacher`."""

    data: Path
    out: Path
    teacher: str = DEFAULT_TEACHER
    checkpoint: Path | None = None
    random_weights: bool = False
    head: str | None = None  # None: fit on the train features (paper 4.1); "none": the teacher's own; else a file
    batch_size: int | None = None  # None: 1024 on CUDA, 64 on CPU
    shard_size: int = 16384
    store_features: bool = False  # keep float16 features next to the logits in the final shards
    shard_index: int = 0
    num_shards: int = 1
    device: str = "auto"  # auto: cuda (cuda:LOCAL_RANK under torchrun) when available, else cpu
    seed: int = 0
    workers: int | None = None  # FFCV decoding threads; None: min(8, cores)
    head_epochs: int = 50
    splits: tuple[str, ...] = SPLITS


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

    def identity(self) -> dict[str, Any]:
        """The attributes every shard of this cache shares (IDENTITY_KEYS) plus informational provenance."""
        from common import __version__

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
        return json.loads(json.dumps(values))  # tuples -> lists, as they come back from HDF5 and JSON

    def shard_attrs(self, spec: ShardSpec, kind: str, head: LinearHead | None = None) -> dict[str, Any]:
        split = self.data["splits"][spec.split]
        attrs = {"format": CACHE_FORMAT, "format_version": FORMAT_VERSION, "kind": kind}
        attrs |= {"split": spec.split, "shard": spec.shard, "start": spec.start, "stop": spec.stop}
        attrs |= {"split_count": split["count"], "data_fingerprint": split["fingerprint"], **self.identity()}
        if kind == LOGITS:
            assert head is not None
            return attrs | {"head_hash": head.hash, "store_features": self.cfg.store_features}
        return attrs | {"feature_dtype": "float16"}


# --------------------------------------------------------------------------------------------- entry point


def precompute_teacher(cfg: PrecomputeConfig) -> dict[str, Any]:
    """Run both passes into `cfg.out` and return a summary (images, seconds, images/s, accuracy, manifest)."""
    started = time.perf_counter()
    run = prepare_run(cfg)
    plan = plan_shards({s: run.data["splits"][s]["count"] for s in cfg.splits}, cfg.shard_size)
    given = given_head(run)
    with process_group(run.env):
        if run.env.rank == 0:
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
    report(run, summary, head)
    return summary


def prepare_run(cfg: PrecomputeConfig) -> Run:
    """Check the options against the dataset, pick the device and batch size, and build the teacher."""
    from common.dataset import load_manifest, split_info
    from precompute.teacher import build_teacher

    data = load_manifest(cfg.data)
    for split in cfg.splits:
        split_info(data, split, cfg.data)
    _check_options(cfg)
    env = dist_env()
    device = resolve_device(cfg.device, env)
    batch = resolve_batch_size(cfg, device)
    teacher = build_teacher(cfg.teacher, cfg.checkpoint, cfg.random_weights, cfg.seed)
    teacher.model.to(device)
    if device.type == "cuda":
        teacher.model.to(memory_format=_channels_last())
    if teacher.random_weights and env.rank == 0:
        random_weights_banner(teacher)
    return Run(cfg, data, teacher, device, batch, env, HeadFit(epochs=cfg.head_epochs, seed=cfg.seed))


def _check_options(cfg: PrecomputeConfig) -> None:
    if not cfg.splits:
        raise CdeitError("--splits is empty; name at least one of train, val, test.")
    if cfg.num_shards < 1 or not 0 <= cfg.shard_index < cfg.num_shards:
        raise CdeitError(
            f"--shard-index must be in 0..{cfg.num_shards - 1} for --num-shards {cfg.num_shards}, "
            f"got {cfg.shard_index}."
        )
    if cfg.head_epochs < 1:
        raise CdeitError(f"--head-epochs must be at least 1, got {cfg.head_epochs}.")
    if cfg.head is None and not {"train", "val"} <= set(cfg.splits):
        raise CdeitError(
            "fitting the head needs the train and val splits; add them to --splits or pass --head FILE|none."
        )


def _channels_last() -> Any:
    import torch

    return torch.channels_last


def resolve_device(name: str, env: DistEnv) -> torch.device:
    """`auto` is the local rank's GPU when CUDA is available, else the CPU."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CdeitError(f"--device {name!r} is not a device name; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CdeitError(f"--device {name} asks for CUDA but no CUDA device is visible; use --device cpu or auto.")
        device = torch.device("cuda", env.local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    return device


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


# --------------------------------------------------------------------------------------------- the output directory


def check_out_dir(run: Run, given: LinearHead | None) -> None:
    """Resume silently into a cache of the same run; refuse one of another teacher, data or head."""
    from common.atomic import remove_stale_tmp

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
    if have.get("store_features") is not None and have["store_features"] != run.cfg.store_features:
        raise CdeitError(f"{path} holds a cache with store_features={have['store_features']}; {hint} or match it.")
    for split in run.cfg.splits:
        cached = existing["splits"].get(split, {}).get("fingerprint")
        if cached and cached != run.data["splits"][split]["fingerprint"]:
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
    fingerprints = {s: e["fingerprint"] for s, e in run.data["splits"].items()}
    return meta.get("source") == "fitted" and meta.get("fit") == fit_settings(run.fit, run.teacher, fingerprints)


def _manifest_sums(path: Path) -> dict[str, str]:
    try:
        manifest = read_cache_manifest(path)
    except CdeitError:
        return {}
    return {e["file"]: e["sha256"] for e in manifest["shards"] + manifest["feature_shards"]}


# --------------------------------------------------------------------------------------------- the head


def given_head(run: Run) -> LinearHead | None:
    """The head named by --head: a file, the teacher's own classifier (`none`), or None to fit one."""
    from precompute.teacher import own_head

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
    need = [s for s in plan if s.split in ("train", "val")]
    if not all(s.path(run.cfg.out, FEATURES).is_file() for s in need):
        return None
    train, val = (_split_features(run, [s for s in need if s.split == split]) for split in ("train", "val"))
    console.print(f"fitting the {len(run.data['classes'])}-way head on {len(train[1]):,} train features ...")
    weight, bias, result = fit_head(train, val, len(run.data["classes"]), run.fit, run.device)
    fingerprints = {s: e["fingerprint"] for s, e in run.data["splits"].items()}
    meta = _head_meta(run, "fitted") | {"fit": fit_settings(run.fit, run.teacher, fingerprints), "result": result}
    console.print(
        f"head fitted: val accuracy {result['val_accuracy']:.2%} at epoch {result['best_epoch']}/{run.fit.epochs}"
    )
    return LinearHead(weight, bias, meta | {"device_type": run.device.type})


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
    from precompute.features import compute_feature_shards
    from precompute.preprocess import DeviceResize

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
            run.teacher, resize, cfg.data, todo, cfg.out, run.shard_attrs, run.batch_size, run.device, workers, advance
        )
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
    if run.cfg.store_features:
        out_arrays["features"] = arrays["features"]
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
