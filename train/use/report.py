"""The per-run evaluation report: its key table and Markdown (the figures are train/use/plots.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdeit.common.atomic import atomic_path
from cdeit.common.dataset import SEVERITY_CODES


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


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


def _model_words(result: dict[str, Any]) -> str:
    """The evaluated model: timm's name for a `train --model` run, else the student kind."""
    return f"Model {result['model']} (timm)" if result.get("model") else f"Student {result['student']}"


def write_report(result: dict[str, Any], path: Path, plots: list[Path]) -> Path:
    lines = [
        f"# Evaluation of `{result['run']}` on the {result['split']} split",
        "",
        f"{_model_words(result)}, distillation {result['distill']}, head strategy {result['head_strategy'] or '-'}; "
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
