"""The demo's plan follows the sizing rule of docs/decisions.md: a teacher trained by `cdeit train --model` on 10x
clean photographs of its own seed, cached with `run:DIR`, and students over seeds against the ViT of their seed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import cdeit.common.dataset
import cdeit.common.demo as demo
from cdeit.common.cli import app


def _value(argv: tuple[str, ...], option: str) -> str:
    return argv[argv.index(option) + 1]


def test_default_sizes_follow_the_written_rule() -> None:
    train, val, test = demo.parse_sizes(demo.SIZES)
    assert test * 10 >= 200  # the students' test split: at least 200 source photographs (10 classes)
    t_train, t_val = demo.teacher_sizes((train, val, test))
    assert t_train + t_val >= 10 * (train + val + test) and t_train > 10 * train


def test_the_demo_runs_the_papers_setting_through_its_own_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[tuple[str, ...]] = []
    monkeypatch.setattr(demo, "_run", lambda *argv: commands.append(argv))
    monkeypatch.setattr(cdeit.common.dataset, "load_manifest", lambda path: {"splits": {}})
    demo.run_demo(tmp_path, epochs=2, device="cpu", teacher="resnet10t", sizes="3,1,2", model_kwargs="{}", seeds=2)
    synth = [c for c in commands if c[:2] == ("data", "synth")]
    assert {_value(c, "--seed") for c in synth} == {"0", str(demo.TEACHER_SEED)}  # two disjoint draws
    teacher_train = next(c for c in commands if c[0] == "train" and "--model" in c)
    assert _value(teacher_train, "--model") == "resnet10t" and _value(teacher_train, "--distill") == "none"
    assert _value(teacher_train, "--data") == str(tmp_path / "data-teacher")
    precompute = next(c for c in commands if c[0] == "precompute-teacher")
    assert _value(precompute, "--teacher") == f"run:{_value(teacher_train, '--out')}"
    assert _value(precompute, "--data") == str(tmp_path / "data") and "--random-weights" not in precompute
    students = [c for c in commands if c[0] == "train" and "--student" in c]
    assert sorted((_value(c, "--student"), _value(c, "--seed")) for c in students) == sorted(
        (s, str(seed)) for seed in (0, 1) for s in ("vit", "deit", "cdeit")
    )
    for c in commands:
        if c[0] == "evaluate":  # each run against the ViT of its own seed
            assert _value(c, "--baseline").rsplit("-", 1)[1] == c[1].rsplit("-", 1)[1]
    assert commands[-1][0] == "compare" and len(commands[-1]) == 1 + 6 + 4


def test_checkpoint_is_refused_with_a_sentence_naming_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "w.pth")])
    assert result.exit_code == 2 and "--checkpoint" in result.output and not (tmp_path / "raw").exists()
