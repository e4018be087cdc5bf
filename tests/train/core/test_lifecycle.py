"""A run's life beyond one training (issue 23): starting from weights, extending a run, best and last files,
per-step logging, small data. Tiny ViTs on the tiny dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.common.errors import CdeitError
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.models import build_student, read_classes
from cdeit.train.core.trainer import Trainer, train
from cdeit.train.core.weights import initial_state, sha256_file

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}
STEPS = 220 // 32  # steps per epoch of the tiny dataset at batch 32


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:  # noqa: ANN003
    base = dict(student="vit", distill="none", data=str(data), out=str(out), epochs=1, batch_size=32,
                lr_per_512=2e-3, warmup_epochs=0.5, eval_batch_size=110, model_kwargs=TINY, workers=1,
                device="cpu")  # fmt: skip
    return TrainConfig(**(base | kw))


@pytest.fixture(scope="module")
def finished(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch tiny ViT run (read-only: copy it to change it)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(_cfg(tiny_dataset, out))
    return out


# ------------------------------------------------------------------------------------------ --initial-checkpoint
def test_initial_checkpoint_loads_weights_and_is_recorded(tiny_dataset: Path, finished: Path, tmp_path: Path) -> None:
    out = tmp_path / "ft"
    trainer = Trainer(_cfg(tiny_dataset, out, initial_checkpoint=str(finished), seed=5))
    want = load_file(str(finished / "model.safetensors"))
    have = trainer.raw_model.state_dict()
    assert all(torch.equal(have[k], want[k]) for k in want)  # the run directory's model, every tensor
    trainer.run()
    assert json.loads((out / "config.json").read_text())["initial_checkpoint"] == str(finished.resolve())
    recorded = json.loads((out / "environment.json").read_text())["started"]["initial_checkpoint"]
    assert recorded["sha256"] == sha256_file(finished / "model.safetensors")


def test_initial_checkpoint_new_heads_for_other_classes_and_refusals(finished: Path, tmp_path: Path) -> None:
    five = build_student("vit", num_classes=5, **TINY)
    state, fresh = initial_state(finished / "model.safetensors", five)
    assert fresh == ["head.weight", "head.bias"] and "head.weight" not in state
    five.load_state_dict(state, strict=False)  # everything but the head fits
    wide = build_student("vit", **(TINY | {"embed_dim": 64}))
    with pytest.raises(CdeitError, match="--initial-checkpoint") as info:
        initial_state(finished, wide)
    assert any(key in str(info.value) for key in wide.state_dict())  # names the key that does not fit
    deit = build_student("deit", **TINY)
    with pytest.raises(CdeitError, match="dist_token"):  # a key the file lacks
        initial_state(finished, deit)
    with pytest.raises(CdeitError, match="--initial-checkpoint"):
        initial_state(tmp_path / "nothing.safetensors", five)


# ------------------------------------------------------------------------------------------ --resume --epochs N
def test_resume_with_more_epochs_extends_the_schedule(tiny_dataset: Path, finished: Path, tmp_path: Path) -> None:
    from tests.train.core.test_recipe import _scheduled_lrs

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    runner = CliRunner()
    refused = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--seed", "3"])
    assert refused.exit_code == 2 and "--seed" in refused.output  # other settings: still refused, listed
    trainer = Trainer(_cfg(tiny_dataset, run, epochs=2), resume=True)
    used: list[float] = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    summary = trainer.run()
    assert summary["epochs"] == 2 and summary["steps"] == 2 * STEPS
    assert used == _scheduled_lrs(trainer.cfg, STEPS)[STEPS:]  # the 2-epoch curve from the resumed step on
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    extended = json.loads((run / "environment.json").read_text())["resumed"][-1]["extended"]
    assert extended["epochs"] == {"from": 1, "to": 2} and extended["at_step"] == STEPS
    fewer = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "1"])
    assert fewer.exit_code == 2 and "--epochs" in fewer.output


# ------------------------------------------------------------------------------------------ best and last
def test_best_is_recorded_and_files_name_their_classes(finished: Path, tiny_dataset: Path) -> None:
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["best"] == {"file": "best.safetensors", "chosen_by": "val_acc", "epoch": 1}
    classes = json.loads((tiny_dataset / "manifest.json").read_text())["classes"]
    assert read_classes(finished / "best.safetensors") == read_classes(finished / "model.safetensors") == classes


def test_predict_export_evaluate_take_a_checkpoint(finished: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    from PIL import Image

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "a.png")
    classes = json.loads((tiny_dataset / "manifest.json").read_text())["classes"]
    runner = CliRunner()
    by_file = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "--model", str(run / "best.safetensors"),
                                  "--json"])  # fmt: skip
    assert by_file.exit_code == 0, by_file.output
    assert json.loads(by_file.output.strip().splitlines()[-1])["class"] in classes  # named from the file alone
    best = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "--model", str(run), "--checkpoint", "best"])
    assert best.exit_code == 0, best.output
    missing = runner.invoke(app, ["predict", str(tmp_path / "a.png"), "--model", str(run), "--checkpoint", "x.st"])
    assert missing.exit_code == 2 and "--checkpoint" in missing.output
    exported = runner.invoke(app, ["export", str(run), "--to", str(tmp_path / "b.safetensors"), "--checkpoint", "best"])
    assert exported.exit_code == 0, exported.output
    want, have = load_file(str(run / "best.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert all(torch.equal(want[k], have[k]) for k in want)
    ev = runner.invoke(app, ["evaluate", str(run), "--checkpoint", "best", "--split", "val", "--device", "cpu",
                             "--workers", "1", "--batch-size", "110"])  # fmt: skip
    assert ev.exit_code == 0, ev.output
    result = json.loads((run / "eval" / "best" / "val.json").read_text())
    from cdeit.train.core.weights import sha256_file

    sha = sha256_file(run / "best.safetensors")  # the model's hash: what makes saved predictions stale (issue 25)
    assert result["checkpoint"] == {"name": "best", "file": str(run / "best.safetensors"), "sha256": sha}
    assert (run / "eval" / "best" / "report-val.md").is_file() and not (run / "eval" / "val.json").exists()


def test_one_report_per_split(finished: Path, tmp_path: Path) -> None:
    from cdeit.train.use.evaluate import evaluate

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    evaluate(run, split="test", device="cpu", batch_size=110, workers=1)
    test_report = (run / "eval" / "report.md").read_bytes()
    result = evaluate(run, split="val", device="cpu", batch_size=110, workers=1)
    assert (run / "eval" / "report.md").read_bytes() == test_report  # test's report kept, at its path
    assert (
        result["files"]["report"] == str(run / "eval" / "report-val.md") and (run / "eval" / "report-val.md").is_file()
    )
    assert json.loads((run / "eval" / "test.json").read_text())["checkpoint"]["name"] == "last"


# ------------------------------------------------------------------------------------------ logging
def test_tensorboard_has_every_step_and_the_hparams(finished: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(finished / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"step/total", "step/lr", "val/acc"} <= set(tags)
    assert [e.step for e in events.Scalars("step/total")] == list(range(1, STEPS + 1))
    lrs = [e.value for e in events.Scalars("step/lr")]
    assert lrs[0] == pytest.approx(TrainConfig.warmup_lr, rel=1e-3)  # the first step's lr: the warmup's start
    plugins = events.PluginTagToContent("hparams")
    assert plugins  # the hparams plugin's experiment and session summaries


def test_wandb_offline_logs_steps_and_epochs(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    pytest.importorskip("wandb")  # not a dependency of cdeit: the test runs where it is installed
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train(_cfg(tiny_dataset, out, log_wandb=True))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_log_wandb_without_wandb_is_one_sentence(tiny_dataset: Path, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(CdeitError, match="--log-wandb"):
        _cfg(tiny_dataset, tmp_path / "run", log_wandb=True).validate()
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ small data
def test_small_data_is_said_and_library_noise_filtered(tiny_dataset: Path, tmp_path: Path, capfd) -> None:  # noqa: ANN001
    with pytest.raises(CdeitError, match="--batch-size"):  # larger than the 220 training images: refused
        train(_cfg(tiny_dataset, tmp_path / "big", batch_size=256))
    capfd.readouterr()
    train(_cfg(tiny_dataset, tmp_path / "one", batch_size=200, warmup_epochs=0.0))  # one step: a one-step cosine
    err = capfd.readouterr().err
    assert "20" in err and "220" in err  # the 20 images drop_last leaves out, of 220
    assert "Cosine annealing" not in err and "Warning" not in err
