"""The README's real-data workflow, command by command, at tiny scale: procedural images in the CIFAR-10 layout
stand in for the download, corruptions are generated, timm's `test_vit` with random weights is the teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cdeit.common.cli import app

TINY = '{"depth": 1, "embed_dim": 32, "num_heads": 2}'
TRAIN = ["--epochs", "1", "--warmup-epochs", "0.5", "--batch-size", "32", "--eval-batch-size", "256",
         "--model-kwargs", TINY, "--workers", "1", "--device", "cpu"]  # fmt: skip
EVAL = ["--device", "cpu", "--batch-size", "256", "--workers", "1"]


def _cdeit(*argv: str) -> str:
    result = CliRunner().invoke(app, list(argv))
    assert result.exit_code == 0, f"cdeit {' '.join(argv)}\n{result.output}"
    return result.output


@pytest.mark.slow
def test_readme_workflow_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the README's relative paths
    _cdeit("data", "synth", "--to", "raw/", "--train-per-class", "2", "--test-per-class", "1")  # stands in for download
    _cdeit("data", "prepare", "--cifar10", "raw/", "--corruptions", "generate", "--out", "data/",
           "--per-class-per-type", "1,1,1", "--workers", "1")  # fmt: skip
    _cdeit("precompute-teacher", "--data", "data/", "--out", "cache/", "--teacher", "test_vit", "--random-weights",
           "--batch-size", "64", "--shard-size", "128", "--head-epochs", "2", "--device", "cpu",
           "--workers", "1")  # fmt: skip
    _cdeit("train", "--student", "vit", "--distill", "none", "--data", "data/", "--out", "runs/vit", *TRAIN)
    _cdeit("train", "--student", "deit", "--distill", "soft", "--data", "data/", "--teacher-cache", "cache/",
           "--out", "runs/deit-soft", *TRAIN)  # fmt: skip
    _cdeit("train", "--student", "cdeit", "--distill", "hard", "--data", "data/", "--teacher-cache", "cache/",
           "--out", "runs/cdeit-hard", *TRAIN)  # fmt: skip
    _cdeit("evaluate", "runs/deit-soft", "--baseline", "runs/vit", "--teacher-cache", "cache/", *EVAL)
    # the baseline was evaluated too (against itself); compare evaluates cdeit-hard the same way
    assert json.loads(Path("runs/vit/eval/test.json").read_text())["mce"]["mce"] == pytest.approx(1.0)
    output = _cdeit("compare", "runs/vit", "runs/deit-soft", "runs/cdeit-hard", "--out", "results/", *EVAL)
    assert "evaluated runs/cdeit-hard" in output
    cdeit_eval = json.loads(Path("runs/cdeit-hard/eval/test.json").read_text())
    assert cdeit_eval["baseline"] == str(tmp_path / "runs" / "vit") and "teacher" in cdeit_eval
    lines = Path("results/compare.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = [line.split("|")[1:-1] for line in lines[start:] if line.startswith("|")][: 2 + 3]  # the first table
    mce = next(i for i, title in enumerate(table[0]) if title.strip().startswith("mCE"))
    rows = table[2:]
    assert len(rows) == 3 and all(row[mce].strip() not in ("", "-") for row in rows)  # every run has an mCE
