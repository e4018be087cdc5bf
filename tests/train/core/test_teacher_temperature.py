"""`--teacher-temperature auto|none|VALUE`: the cached logits divided by it before soft targets, tau on top."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cdeit.common.errors import CdeitError
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.teachers import teacher_temperature
from tests.train.core.test_trainer import _cfg

CACHE_T = 2.0


@pytest.fixture(scope="module")
def calibrated(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher cache (timm's test_vit, random weights) whose manifest records a temperature of CACHE_T."""
    from cdeit.common.cache import write_manifest
    from cdeit.precompute.run import precompute_teacher
    from tests.precompute.helpers import calibration_record, config

    out = tmp_path_factory.mktemp("cache") / "cache"
    manifest = precompute_teacher(config(tiny_dataset, out, store_features=False))["manifest"]
    write_manifest(out, records={"calibration": calibration_record(manifest, CACHE_T)})
    return out


def test_the_temperature_resolves_from_the_option_and_the_cache(
    tiny_dataset: Path, calibrated: Path, tmp_path: Path
) -> None:
    def resolved(value: str | float, cache: Path = calibrated) -> float:
        cfg = _cfg(tiny_dataset, tmp_path, student="deit", distill="soft", teacher_cache=str(cache))
        return teacher_temperature(TrainConfig(**{**cfg.to_json(), "teacher_temperature": value}).validate())

    assert resolved("auto") == CACHE_T and resolved("none") == 1.0 and resolved(1.5) == 1.5
    old = tmp_path / "old"
    shutil.copytree(calibrated, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["calibration"]  # a cache computed before calibration existed
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert resolved("auto", old) == 1.0


@pytest.mark.parametrize("value", ["warm", 0.0, -2.0, float("nan")])
def test_a_bad_temperature_names_the_option(tiny_dataset: Path, tmp_path: Path, value: str | float) -> None:
    with pytest.raises(CdeitError, match="--teacher-temperature"):
        _cfg(tiny_dataset, tmp_path, teacher_temperature=value).validate()


def test_soft_targets_divide_the_cached_logits_hard_targets_do_not_change(
    tiny_dataset: Path, calibrated: Path, tmp_path: Path
) -> None:
    from cdeit.common.cache import load_teacher_logits
    from cdeit.train.core.mixing import make_targets
    from cdeit.train.core.trainer import Trainer

    table = load_teacher_logits(calibrated, tiny_dataset, "train")
    for distill in ("soft", "hard"):
        cfg = _cfg(tiny_dataset, tmp_path / distill, student="deit", distill=distill, teacher_cache=str(calibrated))
        trainer = Trainer(cfg)
        batch = dict(zip(trainer.batch_fields, next(iter(trainer.train_loader)), strict=True))
        got = trainer.augment.targets(batch, trainer.teacher.gather(batch)["logits"])
        want = make_targets(batch["label"], batch["corruption"], table[batch["index"]] / CACHE_T, distill, cfg.tau,
                            cfg.label_smoothing, num_classes=10)  # fmt: skip
        assert torch.allclose(got.teacher, want.teacher)
        if distill == "hard":  # the argmax of logits / T is the argmax of the logits
            assert torch.equal(got.teacher.argmax(-1), table[batch["index"]].argmax(-1))


def test_the_run_records_its_temperature(tiny_dataset: Path, calibrated: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cdeit.common.cli import app
    from tests.train.core.test_trainer import _cli_args

    out = tmp_path / "run"
    args = _cli_args(tiny_dataset, out, "--epochs", "1", "--teacher-cache", str(calibrated), "--teacher-temperature",
                     "1.25")  # fmt: skip
    args[args.index("--student") + 1], args[args.index("--distill") + 1] = "deit", "soft"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["teacher_temperature"] == 1.25
    assert json.loads((out / "summary.json").read_text())["teacher_temperature"] == 1.25
    bad = CliRunner().invoke(app, [*args[:-1], "lukewarm"])
    assert bad.exit_code != 0 and "--teacher-temperature" in bad.output
