"""`cdeit train --model NAME`: any timm classifier trained on labels alone, evaluated, predicted, exported, and used
as a teacher by `precompute-teacher --teacher run:RUN_DIR` (timm's tiny test_resnet, a CNN)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.common.errors import CdeitError

ARGS = ["--epochs", "1", "--batch-size", "32", "--workers", "1", "--eval-batch-size", "64", "--warmup-epochs", "0"]


def _train(data: Path, out: Path, *extra: str) -> object:
    return CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(out), *ARGS, *extra])


@pytest.fixture(scope="module")
def cnn_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model-run") / "run"
    result = _train(tiny_dataset, out, "--model", "test_resnet")
    assert result.exit_code == 0, result.output
    return out


def test_a_model_run_trains_evaluates_predicts_and_exports(cnn_run: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    import timm

    from cdeit.train.use.deploy import export
    from cdeit.train.use.evaluate import evaluate

    config = json.loads((cnn_run / "config.json").read_text())
    assert config["model"] == "test_resnet" and config["distill"] == "none"
    summary = json.loads((cnn_run / "summary.json").read_text())
    assert summary["model"] == "test_resnet" and summary["train_images"] == 192  # 6 steps of 32
    result = evaluate(cnn_run, device="cpu", batch_size=64, workers=1)
    assert 0 <= result["accuracy"] <= 1
    assert result["model"] == "test_resnet" and "test_resnet" in (cnn_run / "eval" / "report.md").read_text()
    again = _train(tiny_dataset, tmp_path / "again", "--model", "test_resnet", "--initial-checkpoint", str(cnn_run))
    assert again.exit_code == 0, again.output  # a model run starts from another's weights
    start = json.loads((tmp_path / "again" / "config.json").read_text())["initial_checkpoint"]
    assert Path(start).resolve() == cnn_run.resolve() or cnn_run.name in start
    wrong = _train(
        tiny_dataset, tmp_path / "wrong", "--student", "vit", "--distill", "none", "--initial-checkpoint", str(cnn_run)
    )
    assert wrong.exit_code == 2 and "--initial-checkpoint" in wrong.output
    to, sidecar = export(cnn_run, tmp_path / "cnn.safetensors")
    cfg = json.loads(sidecar.read_text())
    plain = timm.create_model(cfg["model_name"], **cfg["kwargs"])  # the exported file is timm's own layout
    plain.load_state_dict(load_file(str(to)))
    assert cfg["kwargs"]["num_classes"] == 10


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        (["--student", "vit"], "--student"),
        (["--distill", "hard"], "--distill"),
        (["--model-kwargs", '{"pretrained_cfg_overlay": {"file": "x.pth"}}'], "pretrained_cfg_overlay"),
        (["--model-kwargs", '{"checkpoint_path": "x.pth"}'], "checkpoint_path"),
        (["--model-kwargs", '{"num_classes": 3}'], "num_classes"),
    ],
)
def test_a_model_run_refuses_what_it_cannot_take(
    tiny_dataset: Path, tmp_path: Path, extra: list[str], option: str
) -> None:
    result = _train(tiny_dataset, tmp_path / "r", "--model", "test_resnet", *extra)
    assert result.exit_code == 2 and option in result.output and "Traceback" not in result.output


def test_an_unknown_or_hub_model_name_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    for name in ("no_such_model", "hf-hub:org/repo", "resnet18.a1_in1k"):
        result = _train(tiny_dataset, tmp_path / "r", "--model", name)
        assert result.exit_code == 2 and "--model" in result.output


@pytest.mark.parametrize(
    "kwargs", [{"pretrained": True}, {"pretrained_cfg_overlay": {"file": "/etc/passwd"}}, {"cache_dir": "/tmp"}]
)
def test_a_model_file_cannot_choose_what_timm_loads(cnn_run: Path, tmp_path: Path, kwargs: dict) -> None:
    from cdeit.train.core.models import load_safetensors

    file = tmp_path / "model.safetensors"
    with safe_open(str(cnn_run / "model.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    config = json.loads(meta["cdeit.model_config"])
    config["kwargs"] |= kwargs
    save_file(
        load_file(str(cnn_run / "model.safetensors")), str(file), meta | {"cdeit.model_config": json.dumps(config)}
    )
    with pytest.raises(CdeitError, match=next(iter(kwargs))) as err:
        load_safetensors(file)
    assert str(file) in str(err.value)


def test_a_run_is_a_teacher_with_its_own_input_and_provenance(
    cnn_run: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    from cdeit.common.cache import load_teacher_logits, read_cache_manifest
    from cdeit.common.dataset import file_sha256
    from cdeit.common.run_model import run_dir_of
    from cdeit.precompute.run import precompute_teacher
    from cdeit.train.core.models import CIFAR10_MEAN, CIFAR10_STD, load_safetensors
    from tests.precompute.helpers import config

    run_copy = tmp_path / "teacher-run"
    shutil.copytree(cnn_run, run_copy)
    assert run_dir_of(str(run_copy)) == run_dir_of(f"run:{run_copy}") == run_copy  # the directory itself is a run
    out = tmp_path / "cache"
    opts = dict(teacher=f"run:{run_copy}", random_weights=False, head="none", store_features=False)
    precompute_teacher(config(tiny_dataset, out, **opts))
    p = read_cache_manifest(out)["provenance"]
    assert p["teacher_run"] == str(run_copy.resolve())
    assert p["teacher_run_sha256"] == file_sha256(run_copy / "model.safetensors")
    assert json.loads(p["teacher_run_config"])["model"] == "test_resnet"
    assert p["input_size"] == [32, 32] and p["mean"] == pytest.approx(list(CIFAR10_MEAN))
    assert p["std"] == pytest.approx(list(CIFAR10_STD)) and p["random_weights"] is False
    # --head none: the cache holds the run's own logits on the test images
    from cdeit.common.dataset import beton_path, read_split
    from cdeit.train.core.models import Normalise

    model = load_safetensors(run_copy / "model.safetensors")
    images = torch.as_tensor(read_split(beton_path(tiny_dataset, "test"), fields=("image",))["image"][:16])
    with torch.no_grad():
        want = model(Normalise.for_model(model, "cpu")(images.permute(0, 3, 1, 2)))
    got = load_teacher_logits(out, tiny_dataset, "test")[:16]
    assert torch.allclose(got, want, atol=1e-4)


def test_a_student_run_or_an_unfinished_one_is_no_teacher(tmp_path: Path) -> None:
    from cdeit.common.teacher import build_teacher

    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CdeitError, match="config.json"):
        build_teacher(f"run:{run}")
    (run / "config.json").write_text(json.dumps({"student": "deit"}))
    (run / "model.safetensors").write_bytes(b"")
    with pytest.raises(CdeitError, match="--model"):
        build_teacher(f"run:{run}")
