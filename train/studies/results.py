"""The evaluated runs a comparison reads: grouped by everything but the seed, checked to be comparable, and
their mCE measured against one baseline group (per seed, from the runs' saved predictions)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cdeit.common.atomic import read_json_object
from cdeit.common.errors import CdeitError
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.kinds import resolve_head_strategy
from cdeit.train.core.rundir import read_run_config
from cdeit.train.studies.study import PLAN, planned_runs, read_plan
from cdeit.train.use.files import eval_dir, read_predictions, read_result, read_summary

NOT_GROUPED = (
    "seed",
    "out",
    "workers",
    "eval_every",
    "eval_batch_size",
    "device",
    "compile",
    "data",
    "teacher_cache",
    "teacher_checkpoint",
    "teacher_module",
    "log_wandb",  # where the run also logged, not what it trained
)  # paths; a cache's teaching enters the key by content
CACHE_INFO_KEYS = ("weights_source", "device_type", "resize", "tool_version")  # may differ between equal caches


@dataclass
class RunResult:
    path: Path
    group: str  # the group's key (a hash of its settings)
    name: str  # the group's display name (the study's configuration name, else the run directory's)
    seed: int
    config: dict[str, Any]
    result: dict[str, Any]  # RUN/eval/<split>.json
    summary: dict[str, Any]
    metrics: dict[str, float | None] = field(default_factory=dict)
    evals: Path | None = None  # the folder of its evaluations (`--checkpoint`: RUN/eval, RUN/eval/best); None: RUN/eval


@dataclass
class Group:
    key: str
    name: str
    runs: list[RunResult]

    @property
    def config(self) -> dict[str, Any]:
        return self.runs[0].config

    def values(self, metric: str) -> np.ndarray:
        return np.array([r.metrics[metric] for r in self.runs if r.metrics.get(metric) is not None], dtype=float)

    def by_seed(self, metric: str) -> dict[int, float]:
        return {r.seed: r.metrics[metric] for r in self.runs if r.metrics.get(metric) is not None}


# ------------------------------------------------------------------------------------------ reading
def group_key(config: dict[str, Any], teaching: dict[str, Any] | None = None) -> str:
    """A hash of the settings that make a configuration, seed and paths excluded; `teaching`: what the run's
    cache stores (a K-view cache's K and augmentation settings, `_teaching`), so its runs form their own group."""
    full = TrainConfig().to_json() | config  # a setting added since a run was made takes its default
    kept = {k: v for k, v in sorted(full.items()) if k not in NOT_GROUPED}
    if teaching:
        kept["teaching"] = teaching
    kept["head_strategy"] = resolve_head_strategy(str(kept.get("student")), kept.get("head_strategy"))
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


RUN_CONFIG_KEYS = {"seed": int, "student": str, "distill": str}  # what a comparison reads of RUN/config.json


def _load_run(run: Path, split: str, name: str | None = None, checkpoint: str = "last") -> RunResult:
    config = read_run_config(run, RUN_CONFIG_KEYS)
    evals = eval_dir(run, checkpoint)
    path = evals / f"{split}.json"
    if not path.is_file():
        raise CdeitError(f"{path} is missing; run `cdeit evaluate {run} --split {split} --checkpoint {checkpoint}`.")
    result, summary = read_result(path), read_summary(run)
    metrics = {
        "accuracy": 100 * result["accuracy"],
        "clean": 100 * result["clean"]["accuracy"] if result.get("clean") else None,
        "corrupted": 100 * result["corrupted"]["accuracy"] if result.get("corrupted") else None,
        "ece": result["ece"],
        "mce": 100 * result["mce"]["mce"] if result.get("mce") else None,
    }
    seed = config["seed"]
    name = name or run.name.removesuffix(f"-s{seed}")  # runs/deit-soft-s1 is one of the group deit-soft
    return RunResult(run, group_key(config, _teaching(config)), name, seed, config, result, summary, metrics, evals)


def collect(paths: list[Path], split: str, checkpoint: str = "last") -> tuple[list[RunResult], dict[str, Any]]:
    """Runs of every study folder and run directory given, each measured at `checkpoint` (last, best); `info` holds
    the studies' baseline and preset."""
    runs: list[RunResult] = []
    info: dict[str, Any] = {"baselines": set(), "presets": set(), "unfinished": 0}
    for path in paths:
        if (path / PLAN).is_file():
            plan = read_plan(path)
            for planned in planned_runs(plan):
                run_dir = path / "runs" / planned.name
                if not (eval_dir(run_dir, checkpoint) / f"{split}.json").is_file():
                    info["unfinished"] += 1
                    continue
                runs.append(_load_run(run_dir, split, planned.group, checkpoint))
                if planned.group == plan.get("baseline"):
                    info["baselines"].add(runs[-1].group)
            info["presets"].add(plan.get("preset"))
        elif (path / "config.json").is_file():  # a run of a study keeps its configuration's name
            plan = path.parent.parent / PLAN
            group = {p.name: p.group for p in planned_runs(read_plan(plan.parent))} if plan.is_file() else {}
            runs.append(_load_run(path, split, group.get(path.name), checkpoint))
        else:
            raise CdeitError(f"{path} is neither a study folder (plan.json) nor a run directory (config.json).")
    if not runs:
        raise CdeitError(f"none of {', '.join(map(str, paths))} holds an evaluated run yet; finish the study first.")
    return runs, info


def group_runs(runs: list[RunResult]) -> list[Group]:
    groups: dict[str, Group] = {}
    for run in runs:
        groups.setdefault(run.group, Group(run.group, run.name, [])).runs.append(run)
    for g in groups.values():
        seeds = [r.seed for r in g.runs]
        if len(set(seeds)) != len(seeds):
            paths = ", ".join(str(r.path) for r in g.runs)
            raise CdeitError(f"runs {paths} have the same settings and seed; compare each run once.")
        g.runs.sort(key=lambda r: r.seed)
    return list(groups.values())


# ------------------------------------------------------------------------------------------ checks
def _provenance(cache: str) -> dict[str, Any] | None:
    """A cache manifest's provenance, or None when there is none to read (the cache is then known by its path)."""
    try:
        provenance = read_json_object(Path(cache) / "manifest.json", cache, "").get("provenance")
    except CdeitError:
        return None
    return provenance if isinstance(provenance, dict) else None


def _cache_identity(cache: str) -> str:
    """What makes two caches the same teacher: their manifest's provenance less per-machine details and less what
    a K-view cache adds (its views are another way to teach from that teacher, a group of its own), else the path."""
    from cdeit.common.views import AUG_KEYS

    provenance = _provenance(cache)
    if provenance is None:
        return str(Path(cache).resolve())
    skip = (*CACHE_INFO_KEYS, *AUG_KEYS)
    return json.dumps({k: v for k, v in provenance.items() if k not in skip}, sort_keys=True)


def _teaching(config: dict[str, Any]) -> dict[str, Any] | None:
    """A K-view cache's K and augmentation settings (its runs replay them), None for a plain cache or none."""
    from cdeit.common.cache import augmentation_of

    provenance = _provenance(config["teacher_cache"]) if _uses_cache(config) else None
    return (augmentation_of(provenance) or None) if provenance else None


def _uses_cache(config: dict[str, Any]) -> bool:
    return bool(config.get("teacher_cache")) and (config.get("distill") != "none" or bool(config.get("align")))


def check_comparable(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    """Refuse runs on different datasets or teacher caches; returns the cache path -> runs that read it."""
    fingerprints = {r.result["fingerprint"]: r for r in runs}
    if len(fingerprints) > 1:
        a, b = list(fingerprints.values())[:2]
        raise CdeitError(
            f"{a.path} and {b.path} were evaluated on different datasets ({a.result['data']}, {b.result['data']}); "
            "compare runs evaluated on the same data."
        )
    caches: dict[str, list[RunResult]] = {}
    identities: dict[str, RunResult] = {}
    for r in (r for r in runs if _uses_cache(r.config)):
        identities.setdefault(_cache_identity(r.config["teacher_cache"]), r)
        caches.setdefault(r.config["teacher_cache"], []).append(r)
    if len(identities) > 1:
        a, b = list(identities.values())[:2]
        raise CdeitError(
            f"{a.path} and {b.path} were distilled from different teacher caches ({a.config['teacher_cache']}, "
            f"{b.config['teacher_cache']}); compare runs taught by one teacher (its K-view caches may differ)."
        )
    return caches


def _predictions(run: RunResult, split: str) -> dict[str, np.ndarray]:
    path = (run.evals or run.path / "eval") / f"{split}-predictions.npz"
    if not path.is_file():
        raise CdeitError(f"{path} is missing, so mCE cannot be measured; rerun `cdeit evaluate {run.path}`.")
    return read_predictions(path)


def _baseline_key(path: str) -> str:
    """The group a stored mCE's baseline run belongs to (its settings less the seed), else its path."""
    try:
        config = read_json_object(Path(path) / "config.json", path, "")
    except CdeitError:
        return path
    return group_key(config, _teaching(config))


def apply_baseline(groups: list[Group], baseline: Group | None, split: str) -> tuple[str | None, str | None]:
    """Set each run's mCE (%) against the baseline run of the same seed; returns (what it is measured against,
    the baseline's group key).

    Without a baseline group the mCE stored by `cdeit evaluate --baseline` is kept, if every run's baseline
    has one configuration (one run, or e.g. the ViT run of each seed).
    """
    if baseline is None:
        stored = sorted({r.result["baseline"] for g in groups for r in g.runs if r.result.get("mce")})
        keys = {_baseline_key(p) for p in stored}
        if len(keys) > 1:
            raise CdeitError(
                f"the runs measured mCE against baselines of different settings ({', '.join(stored)}); evaluate them "
                "against one --baseline configuration, or compare a study with a baseline configuration."
            )
        if not stored:
            return None, None
        against = f"`{stored[0]}`" if len(stored) == 1 else f"{len(stored)} baseline runs of one configuration"
        return against, keys.pop()
    from cdeit.train.use.evaluate import mce_report

    base = {r.seed: _predictions(r, split) for r in baseline.runs}
    for g in groups:
        for r in g.runs:
            r.metrics["mce"] = 100 * mce_report(_predictions(r, split), base[r.seed])["mce"] if r.seed in base else None
    return f"the {baseline.name} runs of the same seed", baseline.key
