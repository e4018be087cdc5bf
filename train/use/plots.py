"""The figures of an evaluation: error per image type beside its baseline, the reliability diagram with the number
of images in each bin, and confusion matrices with a colour bar and their values.

Each figure is built by a function that returns the matplotlib figure (what tests inspect) and written by `save`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cdeit.common.atomic import atomic_path
from cdeit.common.dataset import CORRUPTIONS

MAX_ANNOTATED = 12  # confusion matrices up to this size print their values in the cells


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    """Write `fig` as a PNG atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    pyplot().close(fig)
    return path


def compared_with_itself(result: dict[str, Any]) -> bool:
    """Whether the evaluation's mCE baseline is the evaluated run itself (mCE 100% by definition)."""
    return "baseline" in result and Path(result["baseline"]) == Path(result["run"])


def errors_figure(result: dict[str, Any], split: str) -> Any:
    """Top-1 error per image type; beside it the baseline run's, named, unless the run is its own baseline."""
    plt = pyplot()
    types = [c for c in CORRUPTIONS if c in result["per_corruption"]]
    err = [1 - result["per_corruption"][c]["accuracy"] for c in types]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    x = np.arange(len(types))
    if "mce" in result and not compared_with_itself(result):
        base_acc = result["mce"]["baseline_accuracy"]
        base_err = [1 - base_acc[c] if c in base_acc else 0 for c in types]
        ax.bar(x - 0.2, err, 0.4, label=f"{Path(result['run']).name}: {result['student']} ({result['distill']})")
        ax.bar(x + 0.2, base_err, 0.4, label=f"baseline: {Path(result['baseline']).name}", color="grey")
        ax.legend(fontsize=8)
    else:
        ax.bar(x, err, 0.6, label=f"{Path(result['run']).name}: {result['student']} ({result['distill']})")
    ax.set_xticks(x, types, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("top-1 error")
    ax.set_title(f"error per image type ({split})", fontsize=10)
    fig.tight_layout()
    return fig


def reliability_figure(result: dict[str, Any]) -> Any:
    """Accuracy per confidence bin against the diagonal, and below it how many images each bin holds."""
    plt = pyplot()
    rel = result["reliability"]
    bins = len(rel["count"])
    centers = (np.arange(bins) + 0.5) / bins
    acc = [a if a is not None else 0 for a in rel["accuracy"]]
    fig, (ax, ax_n) = plt.subplots(2, 1, figsize=(4, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centers, acc, width=1 / bins, edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="red", label="perfect calibration")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability, ECE {result['ece']:.4f} (n = {sum(rel['count']):,})", fontsize=10)
    ax.legend(fontsize=8)
    ax_n.bar(centers, rel["count"], width=1 / bins, color="grey", edgecolor="black")
    for c, n in zip(centers, rel["count"], strict=True):
        if n:
            ax_n.text(c, n, f"{n:,}", ha="center", va="bottom", fontsize=6)
    ax_n.set_ylabel("images")
    ax_n.set_xlabel("confidence")
    fig.tight_layout()
    return fig


def confusion_figure(counts: list[list[int]], names: list[str], title: str) -> Any:
    """A row-normalised confusion matrix with its colour bar and, when small enough, each cell's value."""
    plt = pyplot()
    m = np.array(counts, dtype=float)
    m = m / np.maximum(m.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.2, 5))
    image = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true row")
    if len(names) <= MAX_ANNOTATED:
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion of {title} (row-normalised)", fontsize=10)
    fig.tight_layout()
    return fig


def write_plots(result: dict[str, Any], out_dir: Path, split: str, classes: list[str]) -> list[Path]:
    """The evaluation's figures as PNG files in `out_dir`: errors, reliability, confusion matrices."""
    paths = [save(errors_figure(result, split), out_dir / f"{split}-errors.png"),
             save(reliability_figure(result), out_dir / f"{split}-reliability.png")]  # fmt: skip
    matrices = [("class", result["class_confusion"], classes, "classes")]
    if "corruption_head" in result:
        matrices.append(("corruption", result["corruption_head"]["confusion"], list(CORRUPTIONS), "corruption types"))
    for key, counts, names, title in matrices:
        paths.append(save(confusion_figure(counts, names, title), out_dir / f"{split}-confusion-{key}.png"))
    return paths
