"""`cdeit compare`, study-aware: runs grouped by everything but the seed, mean ± std, paired differences.

Inputs are study folders (plan.json) and run directories, each evaluated (`RUN/eval/<split>.json`). A
group is every run whose settings agree except the seed and machinery (paths, threads, device). mCE is
measured against one baseline group, per seed, from the runs' saved predictions; runs on different
datasets or teacher caches, or mCE against different baselines, are refused with a sentence.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cdeit.common.atomic import atomic_path
from cdeit.common.dataset import CORRUPTIONS
from cdeit.common.errors import CdeitError
from cdeit.train.core.config import DEFAULT_HEAD_STRATEGY
from cdeit.train.studies.study import PLAN, planned_runs, read_plan

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
)  # paths; a cache's teaching enters the key by content
METRICS = ("accuracy", "clean", "corrupted", "mce", "ece")
TITLES = {"accuracy": "accuracy (%)", "clean": "clean accuracy (%)", "corrupted": "corrupted accuracy (%)",
          "mce": "mCE (%)", "ece": "ECE"}  # fmt: skip
DISPLAY_NAMES = {"vit": "ViT", "deit": "DeiT", "cdeit": "CdeiT"}
# Measured in docs/benchmarks.md (bench/bench_train.py, one CPU process, DeiT-Tiny student, batch 64): the
# cached trainer ran 80.5 images/s, the same trainer with the DeiT-III Small teacher online at 224px
# (--online-teacher's OnlineTeacher, on the erased and mixed batch) 18.3.
ONLINE_SLOWDOWN = 4.39
ONLINE_SLOWDOWN_SOURCE = "docs/benchmarks.md: 80.5 vs 18.3 images/s on the CPU, batch 64"
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
    from cdeit.train.core.config import TrainConfig

    full = TrainConfig().to_json() | config  # a setting added since a run was made takes its default
    kept = {k: v for k, v in sorted(full.items()) if k not in NOT_GROUPED}
    if teaching:
        kept["teaching"] = teaching
    default = DEFAULT_HEAD_STRATEGY if kept.get("student") == "cdeit" else None
    kept["head_strategy"] = kept.get("head_strategy") or default
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:12]


def _read_json(path: Path, fix: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise CdeitError(f"{path} is missing; {fix}.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CdeitError(f"{path} could not be read ({exc}); {fix}.") from None
    if not isinstance(value, dict) or not set(keys) <= set(value):  # a hand edit or another program's file
        raise CdeitError(
            f"{path} is not the file cdeit writes there (it lacks {', '.join(keys) or 'a JSON object'}); {fix}."
        )
    return value


def _load_run(run: Path, split: str, name: str | None = None) -> RunResult:
    config = _read_json(run / "config.json", "is it a run directory from `cdeit train`?", ("seed",))
    result = _read_json(run / "eval" / f"{split}.json", f"run `cdeit evaluate {run} --split {split}`",
                        ("accuracy", "ece"))  # fmt: skip
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    metrics = {
        "accuracy": 100 * result["accuracy"],
        "clean": 100 * result["clean"]["accuracy"] if result.get("clean") else None,
        "corrupted": 100 * result["corrupted"]["accuracy"] if result.get("corrupted") else None,
        "ece": result["ece"],
        "mce": 100 * result["mce"]["mce"] if "mce" in result else None,
    }
    seed = config["seed"]
    name = name or run.name.removesuffix(f"-s{seed}")  # runs/deit-soft-s1 is one of the group deit-soft
    return RunResult(run, group_key(config, _teaching(config)), name, seed, config, result, summary, metrics)


def collect(paths: list[Path], split: str) -> tuple[list[RunResult], dict[str, Any]]:
    """Runs of every study folder and run directory given; `info` holds the studies' baseline and preset."""
    runs: list[RunResult] = []
    info: dict[str, Any] = {"baselines": set(), "presets": set(), "unfinished": 0}
    for path in paths:
        if (path / PLAN).is_file():
            plan = read_plan(path)
            for planned in planned_runs(plan):
                run_dir = path / "runs" / planned.name
                if not (run_dir / "eval" / f"{split}.json").is_file():
                    info["unfinished"] += 1
                    continue
                runs.append(_load_run(run_dir, split, planned.group))
                if planned.group == plan.get("baseline"):
                    info["baselines"].add(runs[-1].group)
            info["presets"].add(plan.get("preset"))
        elif (path / "config.json").is_file():  # a run of a study keeps its configuration's name
            plan = path.parent.parent / PLAN
            group = {p.name: p.group for p in planned_runs(read_plan(plan.parent))} if plan.is_file() else {}
            runs.append(_load_run(path, split, group.get(path.name)))
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
    try:
        provenance = json.loads((Path(cache) / "manifest.json").read_text())["provenance"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError):
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
    path = run.path / "eval" / f"{split}-predictions.npz"
    if not path.is_file():
        raise CdeitError(f"{path} is missing, so mCE cannot be measured; rerun `cdeit evaluate {run.path}`.")
    with np.load(path) as z:
        return {k: z[k] for k in ("probs", "label", "corruption", "severity")}


def _baseline_key(path: str) -> str:
    """The group a stored mCE's baseline run belongs to (its settings less the seed), else its path."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
        return group_key(config, _teaching(config))
    except (OSError, json.JSONDecodeError, AttributeError):
        return path


def apply_baseline(groups: list[Group], baseline: Group | None, split: str) -> tuple[str | None, str | None]:
    """Set each run's mCE (%) against the baseline run of the same seed; returns (what it is measured against,
    the baseline's group key).

    Without a baseline group the mCE stored by `cdeit evaluate --baseline` is kept, if every run's baseline
    has one configuration (one run, or e.g. the ViT run of each seed).
    """
    if baseline is None:
        stored = sorted({r.result["baseline"] for g in groups for r in g.runs if "mce" in r.result})
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


# ------------------------------------------------------------------------------------------ statistics
def mean_std(values: np.ndarray) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); the spread is undefined for one run."""
    if len(values) == 0:
        return None, None
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None


def paired_difference(group: Group, reference: Group, metric: str) -> dict[str, Any]:
    """Mean of (group - reference) over the seeds both have, with a 95% t interval (n - 1 degrees of freedom)."""
    from scipy.stats import t

    a, b = group.by_seed(metric), reference.by_seed(metric)
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    out: dict[str, Any] = {"n": len(seeds), "seeds": seeds, "mean": float(d.mean()) if len(d) else None}
    if len(d) > 1:
        half = float(t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
        out |= {"low": out["mean"] - half, "high": out["mean"] + half}
    return out


def _fmt(metric: str, mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "-"
    digits = 4 if metric == "ece" else 2
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


def _fmt_diff(metric: str, d: dict[str, Any]) -> str:
    if d["mean"] is None:
        return "-"
    digits = 4 if metric == "ece" else 2
    text = f"{d['mean']:+.{digits}f}"
    return text + (f" [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]" if "low" in d else " (n = 1: no interval)")


# ------------------------------------------------------------------------------------------ tables
GROUP_COLUMNS = ("model", "distillation", "head strategy", "n", *[TITLES[m] for m in METRICS], "parameters (M)",
                 "train images/s", "train time (s)")  # fmt: skip


def group_rows(groups: list[Group]) -> list[list[str]]:
    rows = []
    for g in groups:
        c = g.config
        head = _setting(c, "head_strategy")
        summary = {k: mean_std(np.array([r.summary[k] for r in g.runs if r.summary.get(k)], dtype=float))[0]
                   for k in ("parameters", "train_images_per_s", "train_seconds")}  # fmt: skip
        model = f"{DISPLAY_NAMES.get(c['student'], c['student'])} ({g.name})"
        timing = [f"{summary[k]:,.0f}" if summary[k] else "-" for k in ("train_images_per_s", "train_seconds")]
        rows.append([model, c["distill"], head, str(len(g.runs)), *[_fmt(m, *mean_std(g.values(m))) for m in METRICS],
                     f"{summary['parameters'] / 1e6:.2f}" if summary["parameters"] else "-", *timing])  # fmt: skip
    return rows


def difference_rows(groups: list[Group], reference: Group) -> list[list[str]]:
    rows = []
    for g in groups:
        if g is reference:
            continue
        diffs = {m: paired_difference(g, reference, m) for m in METRICS}
        rows.append([g.name, str(diffs["accuracy"]["n"]), *[_fmt_diff(m, diffs[m]) for m in METRICS]])
    return rows


def _markdown(columns: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *["| " + " | ".join(r) + " |" for r in rows],
    ]


def _csv(path: Path, columns: list[str] | tuple[str, ...], rows: list[list[str]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


def _setting(config: dict[str, Any], key: str) -> str:
    """A configuration's value for a table cell; CdeiT's unset head strategy is the paper's strategy 2."""
    if key == "head_strategy":
        return config.get(key) or (DEFAULT_HEAD_STRATEGY if config.get("student") == "cdeit" else "-")
    return str(config.get(key))


def paper_table(preset: str, groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """A preset's table in the paper's layout: its columns, then measured mean ± std (n) beside the paper's value."""
    from cdeit.train.studies.presets import PRESETS

    p = PRESETS[preset]
    columns = [title for title, _ in p["columns"]]
    for m in p["metrics"]:
        columns += [f"{TITLES[m]} measured", f"{TITLES[m]} paper"]
    rows = []
    for g in groups:
        row = [g.name if key is None else _setting(g.config, key) for _, key in p["columns"]]
        paper = p["paper"].get(g.name, {})
        for m in p["metrics"]:
            mean, std = mean_std(g.values(m))
            row += [_fmt(m, mean, std) + f" (n = {len(g.values(m))})" if mean is not None else "-",
                    str(paper[m]) if m in paper else "-"]  # fmt: skip
        rows.append(row)
    return columns, rows


# ------------------------------------------------------------------------------------------ the cache
def _recorded_seconds(manifest: dict[str, Any]) -> float | None:
    """The precompute wall time if the cache recorded one (manifest or provenance), else None."""
    for where in (manifest, manifest.get("provenance") or {}):
        for key in ("precompute_seconds", "wall_seconds", "seconds"):
            if isinstance(where.get(key), int | float):
                return float(where[key])
    return None


def cache_savings(caches: dict[str, list[RunResult]]) -> list[str]:
    """One sentence per cache: precompute time paid once, runs that reused it, teacher time saved."""
    if not caches:
        return ["No compared run read a teacher cache (no distillation), so the cache saved nothing here."]
    lines = []
    online = [r for runs in caches.values() for r in runs if r.config.get("online_teacher")]
    cached_runs = {p: [r for r in runs if not r.config.get("online_teacher")] for p, runs in caches.items()}
    caches = {p: runs for p, runs in cached_runs.items() if runs}
    for path, runs in caches.items():
        try:
            seconds = _recorded_seconds(json.loads((Path(path) / "manifest.json").read_text()))
        except (OSError, json.JSONDecodeError):
            seconds = None
        paid = f"{seconds:,.0f} s of precompute" if seconds is not None else "its precompute (time not recorded)"
        train_s = sum(r.summary.get("train_seconds") or 0 for r in runs)
        lines.append(
            f"Teacher cache `{path}`: {paid} paid once, reused by {len(runs)} runs; a trainer running the teacher "
            f"online would have added about {train_s * (ONLINE_SLOWDOWN - 1):,.0f} s to their {train_s:,.0f} s of "
            f"training (x{ONLINE_SLOWDOWN} per step, the ratio measured in {ONLINE_SLOWDOWN_SOURCE})."
        )
    if online:
        train_s = sum(r.summary.get("train_seconds") or 0 for r in online)
        lines.append(
            f"{len(online)} run{'s' if len(online) > 1 else ''} ran the teacher online instead (`--online-teacher`), "
            f"{train_s:,.0f} s of training in all, the teacher's forward passes included."
        )
    return lines


# ------------------------------------------------------------------------------------------ plots
def _plots(groups: list[Group], out: Path, split: str) -> Path:
    from cdeit.train.use.report import _plt, _save

    plt = _plt()
    fig, (ax_type, ax_sum, ax_mce) = plt.subplots(1, 3, figsize=(15, 4), gridspec_kw={"width_ratios": [3, 1, 1]})
    types = [c for c in CORRUPTIONS if c in groups[0].runs[0].result["per_corruption"]]
    width = 0.8 / len(groups)
    for i, g in enumerate(groups):
        acc = np.array([[100 * r.result["per_corruption"].get(c, {}).get("accuracy", np.nan) for c in types]
                        for r in g.runs])  # fmt: skip
        spread = acc.std(0, ddof=1) if len(acc) > 1 else None
        x = np.arange(len(types)) + (i - (len(groups) - 1) / 2) * width
        ax_type.bar(x, acc.mean(0), width, yerr=spread, capsize=2, label=f"{g.name} (n = {len(g.runs)})")
    ax_type.set_xticks(range(len(types)), types, rotation=35, ha="right", fontsize=8)
    ax_type.set_ylabel("top-1 accuracy (%)")
    ax_type.set_title(f"accuracy per image type ({split}), mean ± std over seeds", fontsize=10)
    ax_type.set_ylim(0, 1.45 * max(ax_type.get_ylim()[1], 1))  # headroom for the legend
    ax_type.legend(fontsize=7, ncol=2, loc="upper right")
    for ax, metric in ((ax_sum, "accuracy"), (ax_mce, "mce")):
        stats = [mean_std(g.values(metric)) for g in groups]
        ax.bar(range(len(groups)), [m or 0 for m, _ in stats], yerr=[s or 0 for _, s in stats], capsize=3)
        ax.set_xticks(range(len(groups)), [g.name for g in groups], rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{TITLES[metric]}, mean ± std", fontsize=10)
        if all(m is None for m, _ in stats):
            ax.clear()
            ax.axis("off")
            ax.text(0.5, 0.5, f"no {TITLES[metric]}:\nno baseline group", ha="center", va="center", fontsize=9)
    fig.tight_layout()
    return _save(fig, out / "compare.png")


# ------------------------------------------------------------------------------------------ compare
def _find_group(groups: list[Group], name: str, what: str) -> Group:
    for g in groups:
        if g.name == name:
            return g
    raise CdeitError(
        f"{what} {name!r} is not among the compared groups; choose one of {', '.join(g.name for g in groups)}."
    )


def compare(paths: list[Path], out: Path, split: str = "test", reference: str | None = None) -> dict[str, Any]:
    """Write compare.md / .csv (groups), compare-differences.csv, the preset's paper table and compare.png."""
    runs, info = collect([Path(p) for p in paths], split)
    groups = group_runs(runs)
    caches = check_comparable(runs)
    if len(info["baselines"]) > 1:
        raise CdeitError("the studies name different baseline configurations; compare studies with one baseline.")
    baseline = next((g for g in groups if g.key in info["baselines"]), None)
    mce_against, baseline_key = apply_baseline(groups, baseline, split)
    baseline = baseline or next((g for g in groups if g.key == baseline_key), None)  # e.g. `evaluate --baseline`
    ref = _find_group(groups, reference, "--reference") if reference else baseline
    out.mkdir(parents=True, exist_ok=True)
    rows = group_rows(groups)
    md = [f"# Comparison on the {split} split", "", *_markdown(GROUP_COLUMNS, rows), "",
          "Mean ± sample standard deviation (n - 1) over the seeds of each group; n runs per group."]  # fmt: skip
    if mce_against:
        md.append(f"mCE is measured against {mce_against}.")
    if info["unfinished"]:
        md.append(f"{info['unfinished']} planned runs are not finished and evaluated yet, so they are left out.")
    files = {"markdown": out / "compare.md", "csv": _csv(out / "compare.csv", GROUP_COLUMNS, rows)}
    result: dict[str, Any] = {"groups": groups, "reference": ref}
    if ref is not None:
        diff_cols = ["group", "n pairs", *[f"Δ {TITLES[m]} [95% CI]" for m in METRICS]]
        diff_rows = difference_rows(groups, ref)
        md += ["", f"## Paired differences against {ref.name}", "", *_markdown(diff_cols, diff_rows), "",
               "Per seed: the group's run minus the reference's run of that seed; mean, 95% t interval."]  # fmt: skip
        files["differences"] = _csv(out / "compare-differences.csv", diff_cols, diff_rows)
    presets = info["presets"] - {None}
    if len(presets) == 1:
        preset = presets.pop()
        from cdeit.train.studies.presets import PRESETS

        cols, prow = paper_table(preset, groups)
        md += ["", f"## {PRESETS[preset]['title']}", "", *_markdown(cols, prow)]
        files["paper"] = _csv(out / f"{preset}.csv", cols, prow)
    md += ["", "## What the cache saved", "", *cache_savings(caches), ""]
    with atomic_path(files["markdown"]) as tmp:
        tmp.write_text("\n".join(md))
    files["plot"] = _plots(groups, out, split)
    result["files"] = files
    return result
