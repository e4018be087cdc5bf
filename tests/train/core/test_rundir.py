"""A run directory that describes itself and resumes by its name; TensorBoard logs and per-epoch diagnostics."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.common.errors import CdeitError
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.trainer import Trainer, train

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}


def _cfg(data: Path | str, out: Path | str, **kw) -> TrainConfig:  # noqa: ANN003
    base = dict(student="vit", distill="none", data=str(data), out=str(out), epochs=1, batch_size=32,
                lr_per_512=2e-3, warmup_epochs=0.5, eval_batch_size=110, model_kwargs=TINY, workers=1)  # fmt: skip
    return TrainConfig(**(base | kw))


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--student", "vit", "--distill", "none", "--data", str(data), "--out", str(out),
            "--batch-size", "32", "--lr-per-512", "2e-3", "--warmup-epochs", "0.5", "--eval-batch-size", "110",
            "--model-kwargs", json.dumps(TINY), "--workers", "1", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def cache(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher cache for the tiny dataset (timm's test_vit, random weights, fitted head)."""
    from cdeit.precompute.run import precompute_teacher
    from tests.precompute.helpers import config

    out = tmp_path_factory.mktemp("cache") / "cache"
    precompute_teacher(config(tiny_dataset, out, store_features=False))
    return out


@pytest.mark.slow
def test_paths_absolute_environment_recorded_and_evaluate_from_anywhere(
    tiny_dataset: Path, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread
) -> None:
    shutil.copytree(tiny_dataset, tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        train(_cfg("data", "runs/deit", student="deit", distill="hard", teacher_cache=str(cache)))
    finally:
        os.umask(old)
    run = tmp_path / "runs" / "deit"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"] == str(tmp_path / "data") and cfg["out"] == str(run) and cfg["teacher_cache"] == str(cache)
    env = json.loads((run / "environment.json").read_text())["started"]
    assert set(env["versions"]) >= {"cdeit", "torch", "timm", "ffcv", "numpy"} and env["versions"]["torch"]
    assert "git_commit" in env and env["device_name"] and env["device"] == "cpu"
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert env["data"]["fingerprints"] == {k: v["fingerprint"] for k, v in manifest["splits"].items()}
    assert re.fullmatch(r"[0-9a-f]{64}", env["teacher_cache"]["identity"])
    for name in ("model.safetensors", "best.safetensors", "checkpoints/last.pt", "config.json"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name  # the umask, not 0600
    monkeypatch.chdir(tmp_path / "runs")  # another working directory
    result = CliRunner().invoke(app, ["evaluate", "deit", "--split", "val", "--device", "cpu", "--workers", "1"])
    assert result.exit_code == 0, result.output


def test_resume_by_name_alone_refuses_other_settings(tiny_dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    assert runner.invoke(app, _args(tiny_dataset, run, "--epochs", "2")).exit_code == 0
    again = runner.invoke(app, ["train", "--resume", str(run)])
    assert again.exit_code == 0, again.output
    assert "resuming" in again.output
    same = runner.invoke(app, ["train", "--resume", str(run), "--epochs", "2", "--workers", "2"])
    assert same.exit_code == 0, same.output  # agreeing options and --workers are accepted
    bad = runner.invoke(app, ["train", "--resume", str(run), "--seed", "3", "--lr-per-512", "1e-3"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert "--lr-per-512 0.001 (run: 0.002), --seed 3 (run: 0)" in bad.output  # in config order
    other_out = runner.invoke(app, ["train", "--resume", str(run), "--out", str(tmp_path / "x")])
    assert other_out.exit_code == 2 and "--out" in other_out.output
    missing = runner.invoke(app, ["train", "--resume", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "config.json" in missing.output


def test_resume_compares_data_and_cache_by_content_not_path(
    tiny_dataset: Path, cache: Path, tmp_path: Path, one_thread
) -> None:
    from tests.conftest import make_tiny_dataset

    data, run = tmp_path / "data", tmp_path / "run"
    shutil.copytree(tiny_dataset, data)
    train(_cfg(data, run, student="deit", distill="hard", teacher_cache=str(cache)))
    runner = CliRunner()
    moved = tmp_path / "elsewhere" / "data"
    shutil.copytree(data, moved)  # the same data under another path: accepted
    ok = runner.invoke(app, ["train", "--resume", str(run), "--data", str(moved)])
    assert ok.exit_code == 0, ok.output
    assert json.loads((run / "config.json").read_text())["data"] == str(moved)
    assert len(json.loads((run / "environment.json").read_text())["resumed"]) == 1
    shutil.rmtree(moved)
    make_tiny_dataset(moved, seed=5)  # rebuilt in place with another seed: refused
    bad = runner.invoke(app, ["train", "--resume", str(run)])
    assert bad.exit_code == 2 and "--data" in bad.output and "Traceback" not in bad.output, bad.output
    shutil.rmtree(moved)
    shutil.copytree(data, moved)
    copied = tmp_path / "copied-cache"
    shutil.copytree(cache, copied)  # the same cache elsewhere: accepted
    train(_cfg(moved, run, student="deit", distill="hard", teacher_cache=str(copied)), resume=True)
    import h5py

    from cdeit.common.cache import write_manifest

    with h5py.File(sorted(copied.glob("train-*.h5"))[0], "r+") as fh:
        fh["logits"][0] = fh["logits"][0] + 1.0  # other logits under the same path: refused
    write_manifest(copied)
    with pytest.raises(CdeitError, match=re.escape(str(copied))):
        train(_cfg(moved, run, student="deit", distill="hard", teacher_cache=str(copied)), resume=True)


@pytest.mark.slow
def test_kill_after_the_metrics_line_loses_nothing_and_truncation_is_repaired(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_thread
) -> None:
    run = tmp_path / "run"
    real_save = Trainer.save_checkpoint

    def killed_at_epoch_2(self: Trainer) -> None:
        if self.state.epoch == 2:
            raise KeyboardInterrupt  # the process dies between epoch 2's metrics line and its checkpoint
        real_save(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", killed_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tiny_dataset, run, epochs=3))
    monkeypatch.setattr(Trainer, "save_checkpoint", real_save)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 3, "step": 1')  # a full disk cut the last line
    summary = train(_cfg(tiny_dataset, run, epochs=3), resume=True)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3] and summary["epochs"] == 3
    # a line the file lost but the checkpoint holds is written back; a damaged earlier line is one sentence
    (run / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    train(_cfg(tiny_dataset, run, epochs=3), resume=True)
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    (run / "metrics.jsonl").write_text(lines[0] + "\n{broken\n" + lines[2] + "\n")
    with pytest.raises(CdeitError, match=r"metrics.jsonl line 2"):
        train(_cfg(tiny_dataset, run, epochs=3), resume=True)


def _scalars(tb: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_and_per_epoch_teacher_and_token_diagnostics(
    tiny_dataset: Path, cache: Path, tmp_path: Path, one_thread
) -> None:
    from cdeit.train.use.evaluate import evaluate

    run = tmp_path / "cdeit"
    train(_cfg(tiny_dataset, run, student="cdeit", distill="hard", teacher_cache=str(cache), epochs=2,
               teacher_temperature=2.0))  # fmt: skip
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert 0 <= last["val_teacher_agreement"] <= 1 and last["val_teacher_kl"] >= 0
    assert {"val_cos_cls~dist", "val_cos_cls~corr", "val_cos_dist~corr"} <= set(last)
    # the same numbers as `cdeit evaluate` computes on the final model
    result = evaluate(run, split="val", teacher_cache=str(cache), device="cpu", batch_size=64, workers=1)
    assert last["val_teacher_agreement"] == pytest.approx(result["teacher"]["agreement"])
    assert last["val_cos_cls~corr"] == pytest.approx(result["token_similarity"]["cls~corr"], abs=1e-5)
    assert last["val_acc"] == pytest.approx(result["accuracy"])
    # KL against the teacher the run learns from: the cached logits divided by the run's teacher temperature
    import numpy as np
    import torch

    from cdeit.common.cache import load_teacher_logits

    temperature = json.loads((run / "summary.json").read_text())["teacher_temperature"]
    assert temperature == 2.0  # not 1, so the check below can tell the run's temperature from none
    log_t = (load_teacher_logits(str(cache), str(tiny_dataset), "val") / temperature).log_softmax(1).double()
    probs = torch.from_numpy(np.load(run / "eval" / "val-predictions.npz")["probs"]).double()
    kl = (log_t.exp() * (log_t - probs.clamp_min(1e-12).log())).sum(1).mean().item()
    assert last["val_teacher_kl"] == pytest.approx(kl, rel=1e-3)
    scalars = _scalars(run / "tb")
    tags = ("train/total", "train/cls_ce", "train/dist_ce", "train/corr_ce", "lr", "train/images_per_s", "val/acc",
            "val/loss", "val/ece", "val/teacher_agreement", "val/teacher_kl", "val/cos_cls~corr")  # fmt: skip
    for tag in tags:
        assert len(scalars[tag]) == 2, tag
    assert scalars["val/acc"] == pytest.approx([r["val_acc"] for r in records])
    assert scalars["lr"] == pytest.approx([r["lr"] for r in records])


def test_progress_lines_when_output_is_a_file(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from cdeit.common.console import progress_bar

    monkeypatch.setenv("CDEIT_PROGRESS_EVERY", "0")
    with progress_bar("training", 4, unit="steps") as advance:
        for i in range(4):
            advance(1, info=f"loss {i}")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 5  # one per advance (every 0 s) and the final count
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d training 2/4 \(50%\), [\d.,]+ steps/s, .* left  loss 1",
                        lines[1])  # fmt: skip
    monkeypatch.setenv("CDEIT_PROGRESS_EVERY", "3600")
    with progress_bar("quick", 4) as advance:
        advance(4)
    assert capsys.readouterr().err == ""  # a short stage stays quiet


def test_checkpoint_keeps_the_epoch_record(tiny_dataset: Path, tmp_path: Path, one_thread) -> None:
    train(_cfg(tiny_dataset, tmp_path / "run"))
    payload = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert payload["record"]["epoch"] == 1 and "val_acc" in payload["record"]


def test_cache_identity_covers_the_views_a_run_replays(
    views_cache: Path, same_feature_cache: Path, tmp_path: Path
) -> None:
    """A K-view cache's identity covers its view shards; a plain cache's is what it always was."""
    import hashlib

    from cdeit.common.cache import read_cache_manifest
    from cdeit.train.core.rundir import cache_identity

    def logits_and_head(cache: Path) -> str:
        manifest = read_cache_manifest(cache)
        shards = sorted((e["file"], e["sha256"]) for e in manifest["shards"])
        content = {"shards": shards, "head": manifest["head"]["hash"]}
        return hashlib.sha256(json.dumps(content).encode()).hexdigest()

    assert cache_identity(same_feature_cache) == logits_and_head(same_feature_cache)
    assert read_cache_manifest(views_cache)["augmented_shards"]
    assert cache_identity(views_cache) != logits_and_head(views_cache)
    copy = Path(shutil.copytree(views_cache, tmp_path / "copy"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["augmented_shards"][0]["sha256"] = "sha256:" + "0" * 64  # other view bytes, same logits and head
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert logits_and_head(copy) == logits_and_head(views_cache)
    assert cache_identity(copy) != cache_identity(views_cache)


def test_resume_compares_the_view_identity_and_accepts_new_online_teacher_paths(
    views_cache: Path, tmp_path: Path
) -> None:
    from cdeit.train.core.rundir import ENVIRONMENT, cache_identity, check_identity, resume_config

    run = tmp_path / "run"
    run.mkdir()
    env = {"data": {"path": "d", "fingerprints": {}}, "teacher_cache": {"path": str(views_cache)}}
    now = env | {"teacher_cache": {"path": str(views_cache), "identity": cache_identity(views_cache)}}
    for recorded, ok in ((cache_identity(views_cache), True), ("sha256:other", False)):
        (run / ENVIRONMENT).write_text(json.dumps({"started": env | {"teacher_cache": {"identity": recorded}}}))
        if ok:
            check_identity(run, now)
        else:
            with pytest.raises(CdeitError, match=re.escape(str(views_cache))):
                check_identity(run, now)
    saved = TrainConfig(data="d", out=str(run), teacher_cache="c", online_teacher=True, teacher_checkpoint="/old.st")
    (run / "config.json").write_text(json.dumps(saved.to_json()))
    resumed = resume_config(run, {"teacher_checkpoint": "/moved/teacher.safetensors"})
    assert resumed.teacher_checkpoint == "/moved/teacher.safetensors" and resumed.online_teacher


def test_settings_from_a_mapping_are_checked_then_validated(tmp_path: Path) -> None:
    """TrainConfig.from_mapping (--config, --resume, studies): option names, `lambda`, types, then validate()."""
    base = {"data": "d", "out": "o", "teacher_cache": "c"}
    cfg = TrainConfig.from_mapping(base | {"lr-per-512": 1, "lambda": 0.3, "distill": "soft", "clip_grad": None}, "x")
    assert cfg.lr_per_512 == 1 and cfg.lam == 0.3 and cfg.epochs == TrainConfig().epochs  # left out: the default
    bad = {
        "learning_rate": 1,  # unknown key
        "epochs": 1.5,  # a float is not an integer
        "lr_per_512": True,  # a bool is not a number
        "student": "resnet",  # not one of the Literal's values
        "compile": "yes",  # bool | None
        "model_kwargs": [1],  # a dict
        "tau": None,  # not optional
    }
    for key, value in bad.items():
        with pytest.raises(CdeitError, match=f"study.toml: \\[shared\\].*{key}"):
            TrainConfig.from_mapping(base | {key: value}, "study.toml: [shared]")
    with pytest.raises(CdeitError, match="--model-kwargs"):  # validate() runs after the type checks
        TrainConfig.from_mapping(base | {"model_kwargs": {"depht": 2}}, "x")
    assert TrainConfig.check_mapping({"lambda": 0.2}, "x") == {"lam": 0.2}  # a partial table: no validate()
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_json()))
    assert TrainConfig.from_json(path) == cfg
    path.write_text(json.dumps(cfg.to_json() | {"epochs": "two"}))
    with pytest.raises(CdeitError, match="config.json.*epochs"):
        TrainConfig.from_json(path)
