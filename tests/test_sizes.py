"""A dataset's image size and class names flow from its manifest through every stage: a 64px, 5-class dataset
is written, cached by a tiny timm teacher, distilled into a patch-8 student on an 8x8 grid and evaluated; a
manifest written before `image_size` was recorded still reads as 32px."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from cdeit.common.atomic import write_json
from cdeit.common.cache import load_teacher_logits, read_cache_manifest
from cdeit.common.dataset import MANIFEST, image_size, load_manifest, read_split
from cdeit.common.errors import CdeitError
from cdeit.data.writer import write_dataset
from cdeit.precompute.run import precompute_teacher
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.models import load_safetensors, patch_size_for, sized_kwargs
from cdeit.train.core.trainer import train
from cdeit.train.use.evaluate import evaluate
from tests.precompute.helpers import config

NAMES = ["apple", "bee", "cloud", "dune", "eel"]  # 5 classes, none of CIFAR-10's
TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def split_64(n: int, seed: int, offset: int) -> dict[str, np.ndarray]:
    """n 64x64 images coloured by class (learnable), every field of the contract, a few corrupted."""
    rng = np.random.default_rng(seed)
    label = np.arange(n) % len(NAMES)
    colours = np.random.default_rng(7).integers(0, 256, (len(NAMES), 1, 1, 3))
    corruption = (np.arange(n) // len(NAMES)) % 3
    return {
        "image": np.clip(colours[label] + rng.normal(0, 30, (n, 64, 64, 3)), 0, 255).astype(np.uint8),
        "label": label.astype(np.int64), "corruption": corruption.astype(np.int64),
        "severity": np.where(corruption == 0, 0, 2).astype(np.int64), "index": np.arange(n, dtype=np.int64),
        "source": (offset + np.arange(n)).astype(np.int64),
    }  # fmt: skip


@pytest.fixture(scope="module")
def data_64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data64")
    splits = {s: split_64(n, k, 10_000 * k) for k, (s, n) in enumerate({"train": 40, "val": 20, "test": 20}.items())}
    write_dataset(out, splits, {"split_policy": "grouped", "seed": 0, "classes": NAMES})
    return out


def test_64px_dataset_caches_trains_and_evaluates_from_its_manifest(data_64: Path, tmp_path: Path) -> None:
    manifest = load_manifest(data_64)
    assert (manifest["image_size"], manifest["image_shape"], manifest["classes"]) == (64, [64, 64, 3], NAMES)
    assert manifest["corruption_table"] == {"name": "Tiny-ImageNet-C", "image_size": 64}
    assert np.array(manifest["splits"]["train"]["counts_class_by_type"]).shape == (5, 11)
    assert read_split(data_64 / "val.beton")["image"].shape == (20, 64, 64, 3)

    cache = tmp_path / "cache"
    precompute_teacher(config(data_64, cache, batch_size=20, shard_size=40, store_features=False))
    assert read_cache_manifest(cache)["dataset"]["num_classes"] == 5
    assert tuple(load_teacher_logits(cache, data_64, "train").shape) == (40, 5)

    run = tmp_path / "run"
    train(TrainConfig(student="cdeit", distill="soft", data=str(data_64), out=str(run), teacher_cache=str(cache),
                      epochs=1, batch_size=20, warmup_epochs=0, eval_batch_size=20, model_kwargs=TINY,
                      workers=1))  # fmt: skip
    student = load_safetensors(run / "model.safetensors")
    assert student.patch_embed.patch_size == (8, 8) and student.grid_size == (8, 8)
    assert student.num_classes == 5 and student.pretrained_cfg["input_size"] == (3, 64, 64)

    result = evaluate(run, batch_size=20, workers=1)
    assert result["n"] == 20 and sorted(result["per_class"]) == sorted(NAMES)
    assert np.array(result["class_confusion"]).shape == (5, 5)

    from PIL import Image

    from cdeit.train.use.deploy import predict_files

    Image.fromarray(np.full((100, 80, 3), 120, np.uint8)).save(tmp_path / "photo.png")
    (answer,) = predict_files(run, [tmp_path / "photo.png"])
    assert answer["class"] in NAMES  # read at the model's 64px, named from the file's classes


def test_patch_size_rule_and_a_conflicting_img_size() -> None:
    assert [patch_size_for(s) for s in (32, 64, 224, 96, 128, 256)] == [4, 8, 16, 12, 16, 16]
    assert sized_kwargs({"depth": 2}, 32) == {"depth": 2}  # 32px students are built as before
    assert sized_kwargs({}, 64) == {"img_size": 64, "patch_size": 8}
    with pytest.raises(CdeitError, match="patch_size"):
        patch_size_for(100)
    with pytest.raises(CdeitError, match="img_size"):
        sized_kwargs({"img_size": 32}, 64)


def test_a_manifest_without_image_size_reads_as_32px(data_64: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """A dataset written before image_size was recorded trains a patch-4 student as before; evaluating that
    student on the 64px dataset is one sentence naming the dataset."""
    old = tmp_path / "old"
    shutil.copytree(tiny_dataset, old)
    manifest = json.loads((old / MANIFEST).read_text())
    for key in ("image_size", "image_shape", "corruption_table"):
        manifest.pop(key, None)
    write_json(old / MANIFEST, manifest)
    assert image_size(load_manifest(old)) == 32
    assert read_split(old / "test.beton", fields=("image",))["image"].shape[1:] == (32, 32, 3)
    run = tmp_path / "run32"
    train(TrainConfig(student="vit", distill="none", data=str(old), out=str(run), epochs=1, batch_size=55,
                      warmup_epochs=0, eval_batch_size=55, model_kwargs=TINY, workers=1))  # fmt: skip
    student = load_safetensors(run / "model.safetensors")
    assert student.patch_embed.patch_size == (4, 4) and student.grid_size == (8, 8) and student.num_classes == 10
    with pytest.raises(CdeitError, match=str(data_64)):
        evaluate(run, data=str(data_64), batch_size=20, workers=1)


def test_model_kwargs_are_checked_against_the_datasets_size(data_64: Path, tmp_path: Path) -> None:
    base = dict(student="vit", distill="none", data=str(data_64), out=str(tmp_path / "run"))
    TrainConfig(**base, model_kwargs=TINY | {"img_size": 64}).validate()
    with pytest.raises(CdeitError, match="img_size"):
        TrainConfig(**base, model_kwargs=TINY | {"img_size": 32}).validate()
    assert not (tmp_path / "run").exists()
