"""`cdeit compare`, study-aware: runs grouped by everything but the seed, mean ± std, paired differences.

Inputs are study folders (plan.json) and run directories, each evaluated (`RUN/eval/<split>.json`). A
group is every run whose settings agree except the seed and machinery (paths, threads, device). mCE is
measured against one baseline group, per seed, from the runs' saved predictions; runs on different
datasets or teacher caches, or mCE against different baselines, are refused with a sentence. Reading and
grouping the runs is results.py, the tables tables.py; this module writes the report and the plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cdeit.common.atomic import atomic_path
from cdeit.common.dataset import CORRUPTIONS
from cdeit.common.errors import CdeitError
from cdeit.train.studies.results import Group, _provenance, apply_baseline, check_comparable, collect, group_runs
from cdeit.train.studies.savings import cache_savings
from cdeit.train.studies.tables import (
    GROUP_COLUMNS,
    METRICS,
    TITLES,
    difference_rows,
    group_rows,
    markdown,
    mean_std,
    paper_table,
    write_csv,
)
from cdeit.train.use.plots import save


def teacher_report(groups: list[Group]) -> dict[str, Any] | None:
    """The teacher's evaluation beside the runs (their eval JSON's `teacher`, one cache for all), or None."""
    return next((r.result["teacher"] for g in groups for r in g.runs if r.result.get("teacher")), None)


def teacher_lines(groups: list[Group], split: str) -> list[str]:
    """compare.md's sentence on the teacher: which one, its accuracy on the split, and loudly if its weights are
    random (its cache's provenance; a run evaluated with --teacher-cache names the cache)."""
    teacher = teacher_report(groups)
    cache = next((r.result["teacher_cache"] for g in groups for r in g.runs if r.result.get("teacher_cache")), None)
    if teacher is None or cache is None:
        return []
    provenance = _provenance(cache) or {}
    name, accuracy = provenance.get("teacher", "unknown"), 100 * teacher["accuracy"]
    line = f"Teacher: {name} (cache `{cache}`), accuracy {accuracy:.2f}% on {split}."
    if provenance.get("random_weights"):
        line += " **Its weights are RANDOM: only its fitted head has learned anything; this is no real teacher.**"
    return [line]


def compare_figure(groups: list[Group], split: str) -> Any:
    """Accuracy per image type, overall accuracy and mCE per group: one colour per group in every panel, error bars
    (std over seeds) only where a group has two runs or more, and the teacher's accuracy as a reference line."""
    from cdeit.train.use.plots import pyplot

    plt = pyplot()
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(groups))]
    fig, (ax_type, ax_sum, ax_mce) = plt.subplots(1, 3, figsize=(15, 4), gridspec_kw={"width_ratios": [3, 1, 1]})
    types = [c for c in CORRUPTIONS if c in groups[0].runs[0].result["per_corruption"]]
    width = 0.8 / len(groups)
    for i, g in enumerate(groups):
        acc = np.array([[100 * r.result["per_corruption"].get(c, {}).get("accuracy", np.nan) for c in types]
                        for r in g.runs])  # fmt: skip
        spread = acc.std(0, ddof=1) if len(acc) > 1 else None
        x = np.arange(len(types)) + (i - (len(groups) - 1) / 2) * width
        ax_type.bar(x, acc.mean(0), width, yerr=spread, capsize=2 if spread is not None else 0, color=colours[i],
                    label=f"{g.name} (n = {len(g.runs)})")  # fmt: skip
    teacher = teacher_report(groups)
    if teacher is not None:
        per_type = teacher.get("per_corruption_accuracy", {})
        xs = [k for k, c in enumerate(types) if c in per_type]
        ax_type.plot(xs, [100 * per_type[types[k]] for k in xs], "k_", markersize=14, mew=2, label="teacher")
    ax_type.set_xticks(range(len(types)), types, rotation=35, ha="right", fontsize=8)
    ax_type.set_ylabel("top-1 accuracy (%)")
    ax_type.set_title(f"accuracy per image type ({split}), mean ± std over seeds", fontsize=10)
    ax_type.set_ylim(0, 1.45 * max(ax_type.get_ylim()[1], 1))  # headroom for the legend
    ax_type.legend(fontsize=7, ncol=2, loc="upper right")
    for ax, metric in ((ax_sum, "accuracy"), (ax_mce, "mce")):
        stats = [mean_std(g.values(metric)) for g in groups]
        if all(m is None for m, _ in stats):
            ax.axis("off")
            ax.text(0.5, 0.5, f"no {TITLES[metric]}:\nno baseline group", ha="center", va="center", fontsize=9)
            continue
        for i, (m, sd) in enumerate(stats):
            n = len(groups[i].values(metric))
            ax.bar(i, m or 0, yerr=sd if n > 1 else None, capsize=3 if n > 1 else 0, color=colours[i])
        if metric == "accuracy" and teacher is not None:
            ax.axhline(100 * teacher["accuracy"], color="black", linestyle="--", linewidth=1, label="teacher")
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xticks(range(len(groups)), [g.name for g in groups], rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{TITLES[metric]}, mean ± std", fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ compare
def _find_group(groups: list[Group], name: str, what: str) -> Group:
    for g in groups:
        if g.name == name:
            return g
    raise CdeitError(
        f"{what} {name!r} is not among the compared groups; choose one of {', '.join(g.name for g in groups)}."
    )


def compare(
    paths: list[Path], out: Path, split: str = "test", reference: str | None = None, checkpoint: str = "last"
) -> dict[str, Any]:
    """Write compare.md / .csv (groups), compare-differences.csv, the preset's paper table and compare.png; each run
    measured at `checkpoint` (last: model.safetensors, best: best.safetensors)."""
    runs, info = collect([Path(p) for p in paths], split, checkpoint)
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
    md = [f"# Comparison on the {split} split", "", *markdown(GROUP_COLUMNS, rows), "",
          "Mean ± sample standard deviation (n - 1) over the seeds of each group; n runs per group."]  # fmt: skip
    if mce_against:
        md.append(f"mCE is measured against {mce_against}.")
    md += teacher_lines(groups, split)
    if info["unfinished"]:
        md.append(f"{info['unfinished']} planned runs are not finished and evaluated yet, so they are left out.")
    files = {"markdown": out / "compare.md", "csv": write_csv(out / "compare.csv", GROUP_COLUMNS, rows)}
    result: dict[str, Any] = {"groups": groups, "reference": ref}
    if ref is not None:
        diff_cols = ["group", "n pairs", *[f"Δ {TITLES[m]} [95% CI]" for m in METRICS]]
        diff_rows = difference_rows(groups, ref)
        md += ["", f"## Paired differences against {ref.name}", "", *markdown(diff_cols, diff_rows), "",
               "Per seed: the group's run minus the reference's run of that seed; mean, 95% t interval."]  # fmt: skip
        files["differences"] = write_csv(out / "compare-differences.csv", diff_cols, diff_rows)
    presets = info["presets"] - {None}
    if len(presets) == 1:
        preset = presets.pop()
        from cdeit.train.studies.presets import PRESETS

        cols, prow = paper_table(preset, groups)
        md += ["", f"## {PRESETS[preset]['title']}", "", *markdown(cols, prow)]
        files["paper"] = write_csv(out / f"{preset}.csv", cols, prow)
    md += ["", "## What the cache saved", "", *cache_savings(caches), ""]
    with atomic_path(files["markdown"]) as tmp:
        tmp.write_text("\n".join(md))
    files["plot"] = save(compare_figure(groups, split), out / "compare.png")
    result["files"] = files
    return result
