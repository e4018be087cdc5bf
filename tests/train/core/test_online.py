"""`cdeit train --online-teacher`: the cache's teacher rebuilt, run on the student's own augmented batch, refusals."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cdeit.common.cache import HEAD_FILE, load_teacher_logits
from cdeit.common.errors import CdeitError
from cdeit.common.head import LinearHead, load_head, save_head
from cdeit.common.teacher import build_teacher
from cdeit.common.views import split_tensors
from cdeit.precompute.run import precompute_teacher
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.engine import train_step
from cdeit.train.core.online import OnlineTeacher
from cdeit.train.core.trainer import Trainer
from tests.precompute.helpers import config

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def _checkpoint(path: Path, seed: int) -> Path:
    """A test_vit teacher's weights as a safetensors file, as a user would save a trained teacher."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model("test_vit", pretrained=False, num_classes=10)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> tuple[Path, Path]:
    """(checkpoint, cache): a plain cache of `tiny_dataset` computed from a test_vit checkpoint file."""
    root = tmp_path_factory.mktemp("online")
    weights = _checkpoint(root / "teacher.safetensors", 0)
    cache = root / "cache"
    precompute_teacher(config(tiny_dataset, cache, random_weights=False, checkpoint=weights, store_features=False))
    return weights, cache


def _cfg(data: Path, cache: Path, weights: Path | None, out: Path, **kw) -> TrainConfig:  # noqa: ANN003
    base = dict(student="deit", distill="soft", data=str(data), teacher_cache=str(cache), out=str(out), epochs=1,
                batch_size=32, warmup_epochs=0.5, eval_batch_size=64, model_kwargs=TINY, workers=1,
                online_teacher=True, teacher_checkpoint=str(weights) if weights else None)  # fmt: skip
    return TrainConfig(**(base | kw))


def test_the_online_teacher_is_the_cache_teacher(
    teacher_files: tuple[Path, Path], tiny_dataset: Path, tmp_path: Path
) -> None:
    weights, cache = teacher_files
    trainer = Trainer(_cfg(tiny_dataset, cache, weights, tmp_path / "run"))
    teacher = trainer.teacher
    assert isinstance(teacher, OnlineTeacher) and teacher.view == "augmented"
    images = split_tensors(tiny_dataset, "train", "cpu", ("image",))["image"][:64]
    cached = load_teacher_logits(cache, tiny_dataset, "train")[:64]
    assert torch.allclose(teacher.logits(images), cached, atol=1e-4)  # on the clean image: the cached logits
    # the student's normalised image mapped back to pixels: the same teacher input
    assert torch.allclose(teacher.teach_augmented(trainer.normalise(images)), cached, atol=1e-3)


def test_the_teacher_reads_the_erased_and_mixed_batch(
    teacher_files: tuple[Path, Path], tiny_dataset: Path, tmp_path: Path
) -> None:
    weights, cache = teacher_files
    trainer = Trainer(_cfg(tiny_dataset, cache, weights, tmp_path / "run", mixup_prob=1.0, erasing_prob=1.0))
    seen: dict[str, torch.Tensor] = {}
    teach = trainer.teacher.teach_augmented

    def spy_teacher(images: torch.Tensor) -> torch.Tensor:
        seen["teacher_input"], seen["logits"] = images.clone(), teach(images)
        return seen["logits"]

    trainer.teacher.teach_augmented = spy_teacher
    trainer.raw_model.register_forward_pre_hook(lambda _m, args: seen.__setitem__("student_input", args[0].clone()))
    loss_fn = trainer.engine.loss_fn

    def spy_loss(outputs, targets):  # noqa: ANN001, ANN202
        seen["targets"] = targets
        return loss_fn(outputs, targets)

    trainer.engine.loss_fn = spy_loss
    batch = next(iter(trainer.train_loader))
    train_step(trainer.engine, batch, trainer.state)
    assert torch.equal(seen["teacher_input"], seen["student_input"])  # the very batch the student trains on
    assert not torch.allclose(seen["student_input"], trainer.normalise(batch[0]))  # ... which is erased and mixed
    targets = seen["targets"]
    assert targets.mode == "mixup" and targets.weight < 1.0
    t = trainer.augment.temperature  # the cache's calibration (--teacher-temperature auto) applies online too
    assert torch.allclose(targets.teacher, F.softmax(seen["logits"] / (t * 3.0), -1))  # its own logits, not mixed
    label = F.one_hot(batch[1], 10) * 0.9 + 0.01
    assert torch.allclose(targets.label, label * targets.weight + label[targets.perm] * (1 - targets.weight))
    kind = F.one_hot(batch[2], 11).float()  # the corruption types are mixed like the labels
    assert torch.allclose(targets.corruption, kind * targets.weight + kind[targets.perm] * (1 - targets.weight))


def test_a_run_with_the_online_teacher(
    teacher_files: tuple[Path, Path],
    tiny_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from cdeit.common.cli import run_command

    weights, cache = teacher_files
    run = tmp_path / "run"
    monkeypatch.chdir(weights.parent)  # a relative --teacher-checkpoint is stored absolute
    run_command(["train", "--student", "deit", "--distill", "hard", "--data", str(tiny_dataset), "--teacher-cache",
                 str(cache), "--online-teacher", "--teacher-checkpoint", weights.name, "--out", str(run),
                 "--epochs", "1", "--batch-size", "32", "--warmup-epochs", "0.5", "--workers", "1",
                 "--eval-batch-size", "64", "--model-kwargs", json.dumps(TINY)])  # fmt: skip
    assert "teacher: run online on every erased and mixed batch" in " ".join(capsys.readouterr().err.split())
    summary = json.loads((run / "summary.json").read_text())
    saved = json.loads((run / "config.json").read_text())
    assert summary["teacher_view"] == "augmented" and summary["steps"] == 6
    assert saved["online_teacher"] is True and saved["teacher_checkpoint"] == str(weights)
    assert "val_teacher_agreement" in json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def test_refusals(teacher_files: tuple[Path, Path], tiny_dataset: Path, views_cache: Path, tmp_path: Path) -> None:
    weights, cache = teacher_files
    other = _checkpoint(tmp_path / "other.safetensors", 1)
    with pytest.raises(CdeitError, match=r"teacher weights from --teacher-checkpoint .*other.safetensors .* are not "):
        Trainer(_cfg(tiny_dataset, cache, other, tmp_path / "a"))
    with pytest.raises(CdeitError, match="holds K augmented views, which train replays"):
        Trainer(_cfg(tiny_dataset, views_cache, weights, tmp_path / "b", cutmix_prob=0.3))
    random_cache = tmp_path / "random"
    precompute_teacher(config(tiny_dataset, random_cache, store_features=False, splits=("train", "val")))
    with pytest.raises(CdeitError, match="computed with random teacher weights"):
        Trainer(_cfg(tiny_dataset, random_cache, weights, tmp_path / "c"))
    changed = Path(shutil.copytree(cache, tmp_path / "changed"))
    _checkpoint(changed / HEAD_FILE, 2)  # not even a head: a sentence from the head reader
    with pytest.raises(CdeitError, match=r"head file .*head.safetensors holds"):
        Trainer(_cfg(tiny_dataset, changed, weights, tmp_path / "d"))
    head = load_head(cache / HEAD_FILE, build_teacher("test_vit", weights), 10)
    save_head(changed / HEAD_FILE, LinearHead(head.weight + 0.01, head.bias, head.meta))  # a head, not this one
    with pytest.raises(CdeitError, match=r"head.safetensors \(head sha256:.*\) is not the head of cache"):
        Trainer(_cfg(tiny_dataset, changed, weights, tmp_path / "d2"))
    (changed / HEAD_FILE).unlink()
    with pytest.raises(CdeitError, match=r"has no head.safetensors \(or no head_hash\) to rebuild"):
        Trainer(_cfg(tiny_dataset, changed, weights, tmp_path / "d3"))
    with pytest.raises(CdeitError, match=r"checkpoint .*missing.safetensors does not exist"):
        Trainer(_cfg(tiny_dataset, cache, tmp_path / "missing.safetensors", tmp_path / "d4"))
    with pytest.raises(CdeitError, match=r"--teacher-checkpoint names the online teacher's files; add --online"):
        _cfg(tiny_dataset, cache, weights, tmp_path / "e", online_teacher=False).validate()
    with pytest.raises(CdeitError, match="--online-teacher runs a teacher to distil from, but --distill is none"):
        _cfg(tiny_dataset, cache, weights, tmp_path / "f", distill="none", student="vit").validate()
    with pytest.raises(CdeitError, match="--online-teacher gives the teacher's logits only; drop --align"):
        dataclasses.replace(_cfg(tiny_dataset, cache, weights, tmp_path / "g"), align={"embedding": 1.0}).validate()


@pytest.mark.slow  # a precompute run of the ResNet-20 example (6 s)
def test_a_teacher_module_cache(tiny_dataset: Path, tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    from cdeit.common.teacher import import_teacher_module

    example = Path(__file__).resolve().parents[3] / "examples" / "cifar_resnet.py"
    import_teacher_module(str(example))
    torch.manual_seed(5)
    weights = tmp_path / "r20.safetensors"
    save_file(timm.create_model("resnet20_cifar").state_dict(), str(weights))
    cache = tmp_path / "cache"
    precompute_teacher(config(tiny_dataset, cache, teacher="resnet20_cifar", teacher_module=str(example),
                              random_weights=False, checkpoint=weights, head="none", store_features=False))  # fmt: skip
    with pytest.raises(CdeitError, match=r"comes from --teacher-module cifar_resnet; pass the same file"):
        Trainer(_cfg(tiny_dataset, cache, weights, tmp_path / "a"))
    edited = tmp_path / "cifar_resnet.py"
    edited.write_text(example.read_text() + "\n# edited\n")
    with pytest.raises(CdeitError, match=r"--teacher-module .*cifar_resnet.py is not the file cache"):
        Trainer(_cfg(tiny_dataset, cache, weights, tmp_path / "b", teacher_module=str(edited)))
    trainer = Trainer(_cfg(tiny_dataset, cache, weights, tmp_path / "c", teacher_module=str(example)))
    images = split_tensors(tiny_dataset, "train", "cpu", ("image",))["image"][:64]
    cached = load_teacher_logits(cache, tiny_dataset, "train")[:64]
    assert torch.allclose(trainer.teacher.logits(images), cached, atol=1e-4)


def test_rebuilding_the_teacher_leaves_the_run_s_random_state(
    teacher_files: tuple[Path, Path], tiny_dataset: Path, tmp_path: Path
) -> None:
    """Drop-path and anything else on torch's global generator draw as in a cached run of the same seed."""
    weights, cache = teacher_files
    states = {}
    for online in (True, False):
        cfg = _cfg(tiny_dataset, cache, weights if online else None, tmp_path / str(online), seed=3)
        Trainer(dataclasses.replace(cfg, online_teacher=online))
        states[online] = torch.get_rng_state()
    assert torch.equal(states[True], states[False])


def test_a_bf16_cache_runs_its_teacher_under_bf16() -> None:
    """The dtype a precompute records (PrecomputeJob.compute_dtype) decides the online teacher's autocast."""
    from cdeit.precompute.job import PrecomputeJob
    from cdeit.train.core.online import cache_amp

    for device, amp in (("cuda", True), ("cpu", False)):
        run = PrecomputeJob.__new__(PrecomputeJob)
        run.device = torch.device(device)
        assert cache_amp({"compute_dtype": run.compute_dtype}) is amp


def test_refuses_a_clean_view_cache_and_other_preprocessing(
    teacher_files: tuple[Path, Path], clean_cache: Path, sourced_dataset: Path, tmp_path: Path
) -> None:
    from cdeit.common.cache import read_cache_manifest
    from cdeit.train.core.online import _check_same_teacher

    weights, cache = teacher_files
    with pytest.raises(CdeitError, match="is a clean-view cache .* use a --view same cache"):
        Trainer(_cfg(sourced_dataset, clean_cache, weights, tmp_path / "a"))
    prov = read_cache_manifest(cache)["provenance"]
    teacher = build_teacher("test_vit", weights)
    cfg = _cfg(sourced_dataset, cache, weights, tmp_path / "b")
    _check_same_teacher(cache, prov, teacher, cfg)  # the cache's own teacher passes
    with pytest.raises(CdeitError, match=r"preprocesses differently from cache .* \(interpolation, mean\)"):
        _check_same_teacher(cache, prov | {"interpolation": "nearest", "mean": [0.0, 0.0, 0.0]}, teacher, cfg)


@pytest.mark.slow  # two subprocesses (a precompute and a run) with their own Hugging Face cache (40 s)
def test_a_hub_teacher_is_found_again_by_its_spelling(tiny_dataset: Path, tmp_path: Path) -> None:
    """`--teacher hf-hub:org/repo` names other weights than its architecture's default: the spelling is kept."""
    import os
    import subprocess
    import sys

    import timm

    from tests.precompute.helpers import fake_hf_cache

    torch.manual_seed(123)
    weights = timm.create_model("test_vit", num_classes=10)
    fake_hf_cache(tmp_path / "hf" / "hub", "someone/cifar_teacher", weights)  # not timm's test_vit weights
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    cache, run = tmp_path / "cache", tmp_path / "run"
    cli = [sys.executable, "-m", "cdeit.common.cli"]
    steps = (
        ["precompute-teacher", "--data", str(tiny_dataset), "--out", str(cache), "--teacher",
         "hf-hub:someone/cifar_teacher", "--batch-size", "32", "--shard-size", "64", "--head-epochs", "2",
         "--workers", "1", "--device", "cpu"],
        ["train", "--student", "deit", "--distill", "soft", "--data", str(tiny_dataset), "--teacher-cache",
         str(cache), "--online-teacher", "--out", str(run), "--epochs", "1", "--batch-size", "32", "--workers",
         "1", "--eval-batch-size", "64", "--warmup-epochs", "0.5", "--model-kwargs", json.dumps(TINY)],
    )  # fmt: skip
    for args in steps:
        done = subprocess.run([*cli, *args], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
    provenance = json.loads((cache / "manifest.json").read_text())["provenance"]
    assert provenance["teacher"] == "test_vit" and provenance["teacher_spec"] == "hf-hub:someone/cifar_teacher"
    assert json.loads((run / "summary.json").read_text())["teacher_view"] == "augmented"
