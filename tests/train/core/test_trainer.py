"""`cdeit train` on tiny data: artefacts, learning, exact resume after SIGKILL, refusals, torchrun on CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.common.errors import CdeitError
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.trainer import train

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}
REPO = Path(__file__).resolve().parents[3]


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:  # noqa: ANN003
    base = dict(student="vit", distill="none", data=str(data), out=str(out), epochs=2, batch_size=32,
                lr_per_512=2e-3, warmup_epochs=0.5, eval_batch_size=64, model_kwargs=TINY, workers=1)  # fmt: skip
    return TrainConfig(**(base | kw))


def _cli_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--student", "vit", "--distill", "none", "--data", str(data), "--out", str(out),
            "--batch-size", "32", "--lr-per-512", "2e-3", "--warmup-epochs", "0.5", "--eval-batch-size", "64",
            "--model-kwargs", json.dumps(TINY), "--workers", "1", *extra]  # fmt: skip


def test_run_writes_every_artefact_and_learns(tiny_dataset: Path, tmp_path: Path) -> None:
    """Also: each optimizer step uses the lr of `lr_schedule` (test_recipe checks it against timm), metrics.jsonl
    records the epoch's last one, and config.json and environment.json record the precision actually used."""
    from cdeit.train.core.trainer import Trainer
    from tests.train.core.test_recipe import _scheduled_lrs

    out = tmp_path / "run"
    cfg = _cfg(tiny_dataset, out, epochs=4, mixup_prob=0.0, erasing_prob=0.0, precision="bf16", device="cpu")
    trainer = Trainer(cfg)
    used: list[float] = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: used.append(opt.param_groups[0]["lr"]))
    summary = trainer.run()
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert {"train_total", "train_cls_ce", "val_acc", "val_loss", "val_ece", "lr"} <= set(records[-1])
    n = 220 // 32
    assert summary["steps"] == 4 * n and summary["epochs"] == 4
    assert used == _scheduled_lrs(trainer.cfg, n) and [r["lr"] for r in records] == used[n - 1 :: n]
    assert summary["best_val_acc"] > 0.3  # 10 classes: chance is 0.1
    config = json.loads((out / "config.json").read_text())
    assert config["model_kwargs"] == TINY and config["precision"] == "fp32"  # CPU: no autocast
    assert json.loads((out / "environment.json").read_text())["started"]["precision"] == "fp32"
    for name in ("model.safetensors", "best.safetensors", "model_config.json", "summary.json", "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "model_config.json").read_text())
    assert cfg["model_name"] == "vit_tiny_patch4_32" and cfg["kwargs"]["depth"] == 2


def test_deit_and_cdeit_train_without_teacher(tiny_dataset: Path, tmp_path: Path) -> None:
    for student in ("deit", "cdeit"):
        summary = train(_cfg(tiny_dataset, tmp_path / student, student=student, epochs=1))
        assert summary["steps"] == 220 // 32
    assert json.loads((tmp_path / "cdeit" / "config.json").read_text())["student"] == "cdeit"
    assert summary["head_strategy"] == "linear"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tiny_dataset: Path, tmp_path: Path) -> None:
    """A run killed mid-epoch and resumed ends with the same steps and the same weights (CPU, fixed seed)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    extra = ["--epochs", "3", "--batch-size", "8", "--eval-batch-size", "8"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "cdeit.common.cli"]
    subprocess.run(cmd + _cli_args(data, ref, *extra), check=True, env=env, cwd=REPO, capture_output=True)
    proc = subprocess.Popen(cmd + _cli_args(data, killed, *extra), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # well into the second epoch (27 steps of batch 8)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists()
    moved = tmp_path / "moved"
    killed.rename(moved)  # a run directory that was moved resumes by its name alone
    killed = moved
    done = subprocess.run(cmd + ["train", "--resume", str(killed)], env=env, cwd=tmp_path, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    a, b = _weights(ref / "model.safetensors"), _weights(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    s_ref = json.loads((ref / "summary.json").read_text())
    s_killed = json.loads((killed / "summary.json").read_text())
    assert s_ref["steps"] == s_killed["steps"] == 3 * (220 // 8)
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"student": "resnet"}, "--student"),
        ({"distill": "medium"}, "--distill"),
        ({"student": "deit", "head_strategy": "linear"}, "--head-strategy"),
        ({"student": "vit", "distill": "hard", "teacher_cache": "x"}, "--distill"),
        ({"student": "deit", "distill": "soft"}, "--teacher-cache"),
        ({"batch_size": 1000}, "--batch-size"),
        ({"mixup_prob": 1.5}, "--mixup-prob"),
    ],
)
def test_bad_settings_are_one_sentence(tiny_dataset: Path, tmp_path: Path, kw: dict, message: str) -> None:
    with pytest.raises(CdeitError, match=message):
        train(_cfg(tiny_dataset, tmp_path / "run", **kw))


def test_batch_must_divide_over_ranks(tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(CdeitError, match="--batch-size"):
        train(_cfg(tiny_dataset, tmp_path / "run"))


def test_unwritable_output_and_full_disk(tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CdeitError, match="cannot write .*file/run.*choose a writable --out"):
        train(_cfg(tiny_dataset, blocker / "run"))

    def full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(
        CdeitError, match="the disk is full while writing .*last.pt; free space and rerun with --resume"
    ):
        train(_cfg(tiny_dataset, tmp_path / "run", epochs=1))


def test_existing_run_needs_resume_and_same_settings(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_cfg(tiny_dataset, out, epochs=1))
    with pytest.raises(CdeitError, match="already holds a run; pass --resume"):
        train(_cfg(tiny_dataset, out, epochs=1))
    with pytest.raises(CdeitError, match=r"--resume with other settings .*\(seed\)"):
        train(_cfg(tiny_dataset, out, epochs=1, seed=3), resume=True)
    # more epochs are allowed since issue 23 (the run is extended): tests/train/core/test_lifecycle.py


def test_cli_config_repeats_a_run_and_errors_are_clean(tiny_dataset: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(app, _cli_args(tiny_dataset, tmp_path / "a", "--epochs", "1", "--seed", "7"))
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["train", "--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b")])
    assert again.exit_code == 0, again.output
    a = json.loads((tmp_path / "a" / "config.json").read_text())
    b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert a | {"out": b["out"]} == b and b["seed"] == 7
    wa, wb = _weights(tmp_path / "a" / "model.safetensors"), _weights(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same config, same seed, same device: same weights
    bad = runner.invoke(app, _cli_args(tiny_dataset, tmp_path / "c", "--student", "cnn"))
    assert bad.exit_code == 2 and "--student 'cnn' is unknown" in bad.output and "Traceback" not in bad.output


@pytest.mark.distributed
def test_torchrun_two_cpu_processes(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                "-m", "cdeit.common.cli"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(torchrun + _cli_args(tiny_dataset, out, "--epochs", "1"), env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["steps"] == 220 // 32  # the global batch is split over the ranks: same steps per epoch
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.0 <= record["val_acc"] <= 1.0 and record["val_ece"] >= 0
    assert (out / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def cache(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher cache for the tiny dataset (timm's test_vit, random weights, fitted head)."""
    from cdeit.precompute.run import precompute_teacher
    from tests.precompute.helpers import config

    out = tmp_path_factory.mktemp("cache") / "cache"
    precompute_teacher(config(tiny_dataset, out, store_features=False))
    return out


def test_distilled_runs_join_the_cache_by_index(tiny_dataset: Path, cache: Path, tmp_path: Path) -> None:
    from cdeit.common.cache import load_teacher_logits
    from cdeit.train.core.trainer import Trainer
    from cdeit.train.use.evaluate import evaluate

    table = load_teacher_logits(cache, tiny_dataset, "train")
    trainer = Trainer(_cfg(tiny_dataset, tmp_path / "t", student="deit", distill="hard", teacher_cache=str(cache)))
    _, _, _, index = next(iter(trainer.train_loader))
    assert torch.equal(trainer.teacher.gather({"index": index})["logits"], table[index])
    assert not torch.equal(index, torch.arange(len(index)))  # random order: the join is by index, not position
    for student, distill, part in (("deit", "soft", "train_dist_kl"), ("cdeit", "hard", "train_dist_ce")):
        out = tmp_path / f"{student}-{distill}"
        train(_cfg(tiny_dataset, out, student=student, distill=distill, teacher_cache=str(cache), epochs=1))
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert part in record and record["train_total"] > 0
    # `cdeit evaluate` reports the teacher beside the student
    result = evaluate(tmp_path / "deit-soft", teacher_cache=str(cache), device="cpu", batch_size=64, workers=1)
    teacher = result["teacher"]
    assert 0 <= teacher["accuracy"] <= 1 and 0 <= teacher["agreement"] <= 1
    assert set(teacher["per_corruption_accuracy"]) <= set(result["per_corruption"])


class ImageTable:
    """A TargetTable that reads the batch's images, as an online teacher does: logits from each channel's mean."""

    view, fields, shapes = "same", ("image",), {"logits": (10,)}

    def __init__(self) -> None:
        self.seen: list[int] = []

    def targets_for(self, batch: dict[str, torch.Tensor], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        self.seen.append(len(batch["image"]))
        means = batch["image"].float().mean(dim=(2, 3))  # (B, 3)
        return {"logits": torch.cat([means, -means, 2 * means, means[:, :1]], dim=1) / 255}  # (B, 10)


def test_any_teacher_source_plugs_in(tiny_dataset: Path, tmp_path: Path) -> None:
    from cdeit.common.cache import TeacherTargets
    from cdeit.train.core.engine import train_step
    from cdeit.train.core.teachers import CachedTeacher, TargetTable, TeacherSource
    from cdeit.train.core.trainer import Trainer

    table = ImageTable()
    teacher = CachedTeacher(table, ("logits",))
    assert isinstance(table, TargetTable) and isinstance(TeacherTargets("same", {}), TargetTable)
    assert isinstance(teacher, TeacherSource)
    cfg = _cfg(tiny_dataset, tmp_path / "t", student="deit", distill="soft", teacher_cache="(given)", epochs=1)
    trainer = Trainer(cfg, teacher=teacher)
    assert trainer.teacher is teacher and trainer.batch_fields == ("image", "label", "corruption", "index")
    batch = next(iter(trainer.train_loader))
    got = teacher.gather(dict(zip(trainer.batch_fields, batch, strict=True)))["logits"]
    assert torch.equal(got, table.targets_for({"image": batch[0]}, ("logits",))["logits"])
    parts = train_step(trainer.engine, batch, trainer.state)
    assert parts["dist_kl"] > 0 and table.seen[-1] == 32 and trainer.state.step == 1


def test_cache_for_other_data_or_with_missing_indices_is_refused(
    tiny_dataset: Path, cache: Path, tmp_path: Path
) -> None:
    from cdeit.common.cache import write_manifest
    from tests.conftest import make_tiny_dataset

    other = make_tiny_dataset(tmp_path / "other", seed=5)
    with pytest.raises(CdeitError, match="fingerprint"):
        train(_cfg(other, tmp_path / "a", student="deit", distill="hard", teacher_cache=str(cache)))
    holed = tmp_path / "holed"
    shutil.copytree(cache, holed)
    sorted(holed.glob("train-*.h5"))[1].unlink()
    write_manifest(holed)  # a manifest that honestly lists the shards present: 64 train indices are missing
    with pytest.raises(CdeitError, match="lacks logits for 64 of 220 train indices"):
        train(_cfg(tiny_dataset, tmp_path / "b", student="deit", distill="hard", teacher_cache=str(holed)))


@pytest.mark.slow
def test_distillation_from_a_better_teacher_beats_no_distillation(tmp_path: Path) -> None:
    """Train labels with 80% noise: a teacher whose head was fitted and selected on clean validation
    labels is far better than the labels, and a student distilled from it beats one trained on labels."""
    import numpy as np

    from cdeit.data.writer import write_dataset
    from cdeit.precompute.run import PrecomputeConfig, precompute_teacher
    from tests.conftest import tiny_split

    train_split = tiny_split(880, 0)
    rng = np.random.default_rng(0)
    noisy = rng.random(880) < 0.8
    train_split["label"] = np.where(noisy, rng.integers(0, 10, 880), train_split["label"])
    splits = {"train": train_split, "val": tiny_split(220, 1, 10_000), "test": tiny_split(220, 2, 20_000)}
    data = tmp_path / "data"
    write_dataset(data, splits, {"split_policy": "grouped", "seed": 0})
    precompute_teacher(
        PrecomputeConfig(data=data, out=tmp_path / "cache", teacher="test_vit", random_weights=True, batch_size=32,
                         shard_size=256, head_epochs=100, head_lr=1e-2, head_standardize=True, workers=1)
    )  # fmt: skip
    teacher_val = json.loads((tmp_path / "cache" / "manifest.json").read_text())["splits"]["val"]["accuracy"]
    acc = {}
    for student, distill in (("vit", "none"), ("deit", "hard")):
        cfg = _cfg(data, tmp_path / student, student=student, distill=distill, epochs=2, lr_per_512=1e-2,
                   warmup_epochs=1, teacher_cache=str(tmp_path / "cache") if distill != "none" else None)  # fmt: skip
        acc[student] = train(cfg)["val_acc"]
    assert teacher_val > acc["vit"] + 0.15  # the teacher is better than the student
    assert acc["deit"] > acc["vit"] + 0.15, acc
