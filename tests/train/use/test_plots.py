"""The figures a reader should be able to trust: what each one draws, checked on the matplotlib objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.colors
import numpy as np
import pytest
from matplotlib.container import BarContainer

from cdeit.common.dataset import CORRUPTIONS
from cdeit.train.studies.compare import compare_figure
from cdeit.train.studies.results import Group, RunResult
from cdeit.train.use.plots import confusion_figure, errors_figure, pyplot, reliability_figure

TYPES = CORRUPTIONS[:3]


def _result(run: str, baseline: str | None = None, acc: float = 0.5) -> dict[str, Any]:
    result: dict[str, Any] = {
        "run": run,
        "student": "deit",
        "distill": "hard",
        "ece": 0.1,
        "per_corruption": {c: {"accuracy": acc} for c in TYPES},
        "reliability": {"count": [0, 3, 0, 120], "accuracy": [None, 0.3, None, 0.9], "confidence": [None] * 4},
    }
    if baseline is not None:
        result["baseline"] = baseline
        result["mce"] = {"baseline_accuracy": {c: 0.4 for c in TYPES}}
    return result


@pytest.fixture(autouse=True)
def _close_figures() -> Any:
    yield
    pyplot().close("all")


def test_the_error_plot_names_its_baseline_and_leaves_it_out_against_itself() -> None:
    fig = errors_figure(_result("/r/deit-hard", "/r/vit"), "test")
    ax = fig.axes[0]
    assert len(ax.containers) == 2
    assert any("vit" in t.get_text() for t in ax.get_legend().get_texts())
    alone = errors_figure(_result("/r/vit", "/r/vit"), "test").axes[0]
    assert len(alone.containers) == 1  # a run is not drawn as its own baseline


def test_the_reliability_diagram_shows_the_images_in_each_bin() -> None:
    fig = reliability_figure(_result("/r/a"))
    counts = fig.axes[1]
    assert [round(p.get_height()) for p in counts.patches] == [0, 3, 0, 120]
    assert {t.get_text() for t in counts.texts} == {"3", "120"}  # every non-empty bin says its count


def test_a_confusion_matrix_has_a_colour_bar_and_its_values() -> None:
    counts = np.diag([5] * 10).tolist()
    counts[0][1] = 5  # row 0: half right, half predicted as class 1
    fig = confusion_figure(counts, [f"c{i}" for i in range(10)], "classes")
    assert len(fig.axes) == 2  # the matrix and its colour bar
    values = [t.get_text() for t in fig.axes[0].texts]
    assert len(values) == 100 and values[0] == "0.50" and values[1] == "0.50" and values[11] == "1.00"


def _group(name: str, accs: list[float], teacher: bool = False) -> Group:
    runs = []
    for seed, acc in enumerate(accs):
        result = _result(f"/r/{name}-s{seed}", acc=acc) | {"accuracy": acc}
        if teacher:
            result["teacher"] = {"accuracy": 0.7, "per_corruption_accuracy": {c: 0.7 for c in TYPES}}
        metrics = {"accuracy": 100 * acc, "mce": None}
        runs.append(RunResult(Path(name), name, name, seed, {}, result, {}, metrics))
    return Group(name, name, runs)


def test_the_comparison_plot_colours_groups_alike_caps_only_repeated_runs_and_draws_the_teacher() -> None:
    groups = [_group("vit", [0.5, 0.6], teacher=True), _group("deit", [0.55], teacher=True)]
    fig = compare_figure(groups, "test")
    ax_type, ax_sum = fig.axes[0], fig.axes[1]
    by_type = [c for c in ax_type.containers if isinstance(c, BarContainer)]
    assert by_type[0].errorbar is not None and by_type[1].errorbar is None  # n = 2 has a spread, n = 1 none
    colour = [matplotlib.colors.to_hex(c.patches[0].get_facecolor()) for c in by_type[:2]]
    summary = [matplotlib.colors.to_hex(p.get_facecolor()) for p in ax_sum.patches]
    assert colour == summary and colour[0] != colour[1]  # one colour per group in every panel
    assert any(line.get_label() == "teacher" for line in ax_type.lines)
    assert any(line.get_label() == "teacher" and line.get_ydata()[0] == pytest.approx(70) for line in ax_sum.lines)
    assert not fig.axes[2].get_visible() or not fig.axes[2].axison  # no mCE without a baseline group
