"""Issue 24's workflow on every new source at tiny scale: prepare, precompute (a timm teacher), train, evaluate and
compare, with the image size and the class names and count taken from the dataset itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_folder
from tests.data.fakes import write_fake_cifar100, write_fake_tiny_imagenet

TINY = '{"depth": 1, "embed_dim": 32, "num_heads": 2}'
TRAIN = ["--epochs", "1", "--warmup-epochs", "0", "--eval-batch-size", "256", "--model-kwargs", TINY, "--workers", "1",
         "--device", "cpu"]  # fmt: skip
EVAL = ["--device", "cpu", "--batch-size", "256", "--workers", "1"]


def _cdeit(*argv: str) -> str:
    result = CliRunner().invoke(app, [str(a) for a in argv])
    assert result.exit_code == 0, f"cdeit {' '.join(map(str, argv))}\n{result.output}"
    return result.output


def _source(kind: str, tmp: Path) -> tuple[list[str], int, list[str] | None]:
    """(prepare's source options, image size, class names or None when the source names them itself)."""
    if kind == "cifar100":
        return ["--cifar100", str(write_fake_cifar100(tmp / "raw", train_per_class=2, test_per_class=1))], 32, None
    if kind == "tiny-imagenet":
        return ["--tiny-imagenet", str(write_fake_tiny_imagenet(tmp / "raw", classes=3, train=4, val=3))], 64, None
    folder = write_synthetic_folder(tmp / "folder", per_class=4, size=64)
    return ["--image-folder", str(folder)], 64, list(SYNTHETIC_CLASSES)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cifar100", "tiny-imagenet", "image-folder"])
def test_every_source_prepares_caches_trains_evaluates_and_compares(kind: str, tmp_path: Path) -> None:
    source, size, names = _source(kind, tmp_path)
    data, cache, runs = tmp_path / "data", tmp_path / "cache", tmp_path / "runs"
    _cdeit("data", "prepare", *source, "--corruptions", "generate", "--types", "clean,brightness",
           "--per-class-per-type", "1,1,1", "--out", data, "--workers", "1")  # fmt: skip
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest.get("image_size", 32) == size
    classes = manifest["classes"]
    train_args = [*TRAIN, "--batch-size", str(min(16, manifest["splits"]["train"]["count"]))]
    assert names is None or sorted(classes) == sorted(names)
    _cdeit("data", "show", data, "--out", tmp_path / "show.png")
    _cdeit("data", "audit", data)
    _cdeit("precompute-teacher", "--data", data, "--out", cache, "--teacher", "test_vit", "--random-weights",
           "--batch-size", "64", "--head-epochs", "2", "--device", "cpu", "--workers", "1")  # fmt: skip
    _cdeit("train", "--student", "vit", "--distill", "none", "--data", data, "--out", runs / "vit", *train_args)
    _cdeit("train", "--student", "deit", "--distill", "hard", "--data", data, "--teacher-cache", cache,
           "--out", runs / "deit", *train_args)  # fmt: skip
    config = json.loads((runs / "deit" / "model_config.json").read_text())
    assert config["kwargs"].get("patch_size", 4) == size // 8  # an 8x8 grid at every size
    _cdeit("evaluate", runs / "deit", "--baseline", runs / "vit", "--teacher-cache", cache, *EVAL)
    result = json.loads((runs / "deit" / "eval" / "test.json").read_text())
    assert sorted(result["per_class"]) == sorted(classes) and len(result["class_confusion"]) == len(classes)
    assert "mce" in result and "teacher" in result
    _cdeit("compare", runs / "vit", runs / "deit", "--out", tmp_path / "results", *EVAL)
    assert (tmp_path / "results" / "compare.md").is_file()
