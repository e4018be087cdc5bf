"""The numbers of a comparison as tables: mean ± std per group, paired differences with a t interval, a preset's
table in the paper's layout (what the teacher cache saved is savings.py's)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from cdeit.common.atomic import atomic_path
from cdeit.train.core.kinds import resolve_head_strategy
from cdeit.train.studies.results import Group

METRICS = ("accuracy", "clean", "corrupted", "mce", "ece")
TITLES = {"accuracy": "accuracy (%)", "clean": "clean accuracy (%)", "corrupted": "corrupted accuracy (%)",
          "mce": "mCE (%)", "ece": "ECE"}  # fmt: skip
DISPLAY_NAMES = {"vit": "ViT", "deit": "DeiT", "cdeit": "CdeiT"}


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
        head = setting(c, "head_strategy")
        summary = {k: mean_std(np.array([r.summary[k] for r in g.runs if r.summary.get(k)], dtype=float))[0]
                   for k in ("parameters", "train_images_per_s", "train_seconds")}  # fmt: skip
        model = f"{c.get('model') or DISPLAY_NAMES.get(c['student'], c['student'])} ({g.name})"  # --model: timm's name
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


def markdown(columns: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *["| " + " | ".join(r) + " |" for r in rows],
    ]


def write_csv(path: Path, columns: list[str] | tuple[str, ...], rows: list[list[str]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


def setting(config: dict[str, Any], key: str) -> str:
    """A configuration's value for a table cell; CdeiT's unset head strategy is the paper's strategy 2."""
    if key == "head_strategy":
        return resolve_head_strategy(str(config.get("student")), config.get(key)) or "-"
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
        row = [g.name if key is None else setting(g.config, key) for _, key in p["columns"]]
        paper = p["paper"].get(g.name, {})
        for m in p["metrics"]:
            mean, std = mean_std(g.values(m))
            row += [_fmt(m, mean, std) + f" (n = {len(g.values(m))})" if mean is not None else "-",
                    str(paper[m]) if m in paper else "-"]  # fmt: skip
        rows.append(row)
    return columns, rows
