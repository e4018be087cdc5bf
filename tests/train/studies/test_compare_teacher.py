"""compare.md names the teacher and its accuracy, and says loudly when its weights are random (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from cdeit.train.studies.compare import teacher_lines


def _groups(cache: Path, accuracy: float) -> list:
    run = SimpleNamespace(result={"teacher": {"accuracy": accuracy}, "teacher_cache": str(cache)})
    return [SimpleNamespace(runs=[run])]


@pytest.mark.parametrize("random_weights", [False, True])
def test_the_teacher_line_names_the_teacher_its_accuracy_and_random_weights(
    tmp_path: Path, random_weights: bool
) -> None:
    (tmp_path / "manifest.json").write_text(
        json.dumps({"provenance": {"teacher": "resnet10t", "random_weights": random_weights}})
    )
    (line,) = teacher_lines(_groups(tmp_path, 0.8868), "test")
    assert "resnet10t" in line and "88.68%" in line and str(tmp_path) in line
    assert ("RANDOM" in line) is random_weights


def test_no_teacher_line_without_a_teacher_evaluation(tmp_path: Path) -> None:
    assert teacher_lines([SimpleNamespace(runs=[SimpleNamespace(result={})])], "test") == []
