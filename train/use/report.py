"""Tables and plots of evaluation results: the per-run report and the `cdeit compare` table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdeit.common.atomic import atomic_path
from cdeit.common.dataset import CORRUPTIONS, SEVERITY_CODES


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _plt():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    _plt().close(fig)
    return path


def write_plots(result: dict[str, Any], out_dir: Path, split: str, classes: list[str]) -> list[Path]:
    """Per-corruption error bars (with the baseline's), reliability diagram, confusion matrices."""
    import numpy as np

    plt = _plt()
    paths = []
    types = [c for c in CORRUPTIONS if c in result["per_corruption"]]
    err = [1 - result["per_corruption"][c]["accuracy"] for c in types]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    x = np.arange(len(types))
    if "mce" in result:
        base_acc = result["mce"]["baseline_accuracy"]
        base_err = [1 - base_acc[c] if c in base_acc else 0 for c in types]
        ax.bar(x - 0.2, err, 0.4, label=f"{result['student']} ({result['distill']})")
        ax.bar(x + 0.2, base_err, 0.4, label="baseline", color="grey")
        ax.legend(fontsize=8)
    else:
        ax.bar(x, err, 0.6)
    ax.set_xticks(x, types, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("top-1 error")
    ax.set_title(f"error per image type ({split})", fontsize=10)
    fig.tight_layout()
    paths.append(_save(fig, out_dir / f"{split}-errors.png"))

    rel = result["reliability"]
    bins = len(rel["count"])
    centers = (np.arange(bins) + 0.5) / bins
    acc = [a if a is not None else 0 for a in rel["accuracy"]]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.bar(centers, acc, width=1 / bins, edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="red", label="perfect calibration")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability, ECE {result['ece']:.4f}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(_save(fig, out_dir / f"{split}-reliability.png"))

    matrices = [("class_confusion", classes, "classes")]
    if "corruption_head" in result:
        matrices.append(("corruption_head", list(CORRUPTIONS), "corruption types"))
    for key, names, title in matrices:
        m = np.array(result[key] if key == "class_confusion" else result[key]["confusion"], dtype=float)
        m = m / np.maximum(m.sum(1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(5.5, 5))
        ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"confusion of {title} (row-normalised)", fontsize=10)
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"{split}-confusion-{key.split('_')[0]}.png"))
    return paths


def key_table(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [
        ("accuracy (%)", _pct(result["accuracy"])),
        ("clean accuracy (%)", _pct((result.get("clean") or {}).get("accuracy"))),
        ("corrupted accuracy (%)", _pct((result.get("corrupted") or {}).get("accuracy"))),
        ("mean cross-entropy", f"{result['loss']:.4f}"),
        ("ECE-15", f"{result['ece']:.4f}"),
    ]
    if "mce" in result:
        rows.append(("mCE (%) vs baseline", _pct(result["mce"]["mce"])))
    if "corruption_head" in result:
        rows.append(("corruption-type accuracy (%)", _pct(result["corruption_head"]["accuracy"])))
    for pair, value in result.get("token_similarity", {}).items():
        rows.append((f"cosine({pair}) tokens", f"{value:.3f}"))
    if "teacher" in result:
        rows.append(("teacher accuracy (%)", _pct(result["teacher"]["accuracy"])))
        rows.append(("student-teacher agreement (%)", _pct(result["teacher"]["agreement"])))
    leak = result.get("leakage")
    if leak and leak["seen_in_train"]["n"]:
        rows.append(("accuracy, photograph also in train (%)", _pct(leak["seen_in_train"]["accuracy"])))
        rows.append(("accuracy, photograph not in train (%)", _pct(leak["unseen_in_train"]["accuracy"])))
    return rows


def write_report(result: dict[str, Any], path: Path, plots: list[Path]) -> Path:
    lines = [
        f"# Evaluation of `{result['run']}` on the {result['split']} split",
        "",
        f"Student {result['student']}, distillation {result['distill']}, head strategy {result['head_strategy']}; "
        f"dataset `{result['data']}` ({result['split_policy']} split, {result['n']:,} images, "
        f"fingerprint `{result['fingerprint'][:23]}...`).",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in key_table(result)],
        "",
        "## Per image type",
        "",
        "| type | n | accuracy (%) | cross-entropy | ECE | CE vs baseline |",
        "|---|---|---|---|---|---|",
    ]
    ces = result.get("mce", {}).get("corruption_errors", {})
    for c, v in result["per_corruption"].items():
        ce = _pct(ces[c]) if c in ces else "-"
        lines.append(f"| {c} | {v['n']:,} | {_pct(v['accuracy'])} | {v['loss']:.4f} | {v['ece']:.4f} | {ce} |")
    sev = [str(s) for s in SEVERITY_CODES]
    lines += ["", "## Accuracy (%) per type and severity", "", "| type | " + " | ".join(sev) + " |",
              "|---|" + "---|" * len(sev)]  # fmt: skip
    for c, row in result["per_corruption_severity_accuracy"].items():
        lines.append(f"| {c} | " + " | ".join(_pct(row[s]) if s in row else "" for s in sev) + " |")
    lines += ["", "## Per severity", "", "| severity | n | accuracy (%) | ECE |", "|---|---|---|---|"]
    for s, v in result["per_severity"].items():
        lines.append(f"| {s} | {v['n']:,} | {_pct(v['accuracy'])} | {v['ece']:.4f} |")
    lines += ["", "## Per class", "", "| class | n | accuracy (%) |", "|---|---|---|"]
    for c, v in result["per_class"].items():
        lines.append(f"| {c} | {v['n']:,} | {_pct(v['accuracy'])} |")
    if "teacher" in result:
        lines += ["", "## Teacher on the same split", "", "| type | teacher accuracy (%) | student accuracy (%) |",
                  "|---|---|---|"]  # fmt: skip
        for c, a in result["teacher"]["per_corruption_accuracy"].items():
            lines.append(f"| {c} | {_pct(a)} | {_pct(result['per_corruption'][c]['accuracy'])} |")
    lines += ["", "## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path
