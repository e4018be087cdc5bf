"""The sources of issue 24: CIFAR-100 (+ -C), Tiny-ImageNet (+ -C), image folders; their option checks.

32px sources go through `prepare` end to end; 64px ones are checked as far as the reader and the plan (the
64px write is the sizes branch's: main's writer takes 32x32 only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.common.dataset import SPLITS, load_manifest, read_split
from cdeit.common.errors import CdeitError
from cdeit.data.cifar100 import read_cifar100
from cdeit.data.config import PrepareConfig
from cdeit.data.image_folder import nearest_size, read_image_folder
from cdeit.data.prepare import make_plan, materialise, prepare
from cdeit.data.synthetic import SYNTHETIC_CLASSES, write_synthetic_folder
from cdeit.data.tiny_imagenet import read_tiny_imagenet, read_tiny_imagenet_c
from tests.data.fakes import (
    write_fake_cifar100,
    write_fake_cifar100c,
    write_fake_tiny_imagenet,
    write_fake_tiny_imagenet_c,
)

TYPES = ("clean", "brightness")


@pytest.fixture(scope="module")
def c100(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_cifar100(tmp_path_factory.mktemp("c100"), train_per_class=4, test_per_class=3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_tiny_imagenet(tmp_path_factory.mktemp("tiny"))


def test_cifar100_reader_gives_fine_labels_and_names(c100: Path) -> None:
    photos = read_cifar100(c100.parent)
    assert photos.train_images.shape == (400, 32, 32, 3) and photos.test_images.shape == (300, 32, 32, 3)
    assert photos.train_labels.dtype == np.int64 and set(photos.train_labels) == set(range(100))
    assert photos.class_names == [f"fine{k}" for k in range(100)]


def test_cifar100_plans_every_class_from_its_own_pools(c100: Path, tmp_path: Path) -> None:
    photos = read_cifar100(c100)
    cfg = PrepareConfig(out=tmp_path / "o", cifar100=c100, generate=True, per_class_per_type=(2, 1, 1))
    plans = make_plan(cfg, photos, TYPES)
    assert np.bincount(plans["train"].label, minlength=100).tolist() == [2 * len(TYPES)] * 100
    c = write_fake_cifar100c(tmp_path / "c", photos.test_labels, ("brightness",))
    from cdeit.data.cifar100 import read_cifar100c

    arrays, _ = read_cifar100c(c, ["brightness"], photos.test_labels)
    cfg = PrepareConfig(out=tmp_path / "o", cifar100=c100, cifar100c=c, per_class_per_type=(2, 1, 1))
    splits = materialise(cfg, make_plan(cfg, photos, TYPES), photos, arrays)
    assert splits["test"]["image"].shape[1:] == (32, 32, 3)


def test_cifar100_prepares_end_to_end_with_generated_and_released_corruptions(c100: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    prepare(PrepareConfig(out=out, cifar100=c100, generate=True, per_class_per_type=(2, 1, 1), types=TYPES, workers=1))
    manifest = load_manifest(out)
    assert manifest["classes"] == [f"fine{k}" for k in range(100)] and "cifar100" in manifest["inputs"]
    assert manifest["splits"]["train"]["count"] == 2 * 100 * len(TYPES)
    labels = read_split(out / "train.beton", fields=("label",))["label"]
    assert set(labels) == set(range(100))
    c = write_fake_cifar100c(tmp_path / "c", read_cifar100(c100).test_labels, ("brightness",))
    released = tmp_path / "released"
    prepare(PrepareConfig(out=released, cifar100=c100, cifar100c=c, per_class_per_type=(2, 1, 1), types=TYPES))
    assert load_manifest(released)["corruption_source"] == "cifar100c"


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32px image folder prepared through the command line."""
    tmp = tmp_path_factory.mktemp("folder")
    folder = write_synthetic_folder(tmp / "folder", per_class=4, size=32)
    args = ["data", "prepare", "--image-folder", str(folder), "--out", str(tmp / "data"), "--per-class-per-type"]
    result = CliRunner().invoke(app, [*args, "2,1,1", "--types", "clean,brightness", "--workers", "1"])
    assert result.exit_code == 0, result.output
    return tmp / "data"


def test_image_folder_32px_prepares_with_its_class_names(folder_data: Path) -> None:
    manifest = load_manifest(folder_data)
    assert manifest["classes"] == sorted(SYNTHETIC_CLASSES) and manifest["corruption_source"] == "generate"
    assert manifest["splits"]["train"]["count"] == 2 * len(SYNTHETIC_CLASSES) * len(TYPES)


def test_image_folder_dataset_shows_and_audits(folder_data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["data", "show", str(folder_data), "--out", str(tmp_path / "g.png")]).exit_code == 0
    assert (tmp_path / "g.png").stat().st_size > 0
    audit = runner.invoke(app, ["data", "audit", str(folder_data), "--strict"])
    assert audit.exit_code == 0, audit.output  # a grouped split shares no photograph


def test_image_folder_resizes_other_sizes_by_the_rule(tmp_path: Path) -> None:
    for k, (w, h) in enumerate([(40, 30), (30, 40), (36, 36)]):
        (tmp_path / "f" / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        image = np.zeros((h, w, 3), np.uint8)
        image[:, : w // 2] = 255  # left half white: a centre crop keeps it half white
        Image.fromarray(image).save(tmp_path / "f" / f"c{k % 2}" / f"{k}.png")
    photos = read_image_folder(tmp_path / "f")
    assert photos.train_images.shape == (3, 32, 32, 3) and photos.class_names == ["c0", "c1"]
    assert list(photos.train_labels) == [0, 0, 1]
    assert read_image_folder(tmp_path / "f", image_size=64).image_size == 64
    assert [nearest_size(s) for s in (20, 48, 50, 100, 300)] == [32, 32, 64, 64, 224]


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    write_synthetic_folder(tmp_path / "f", per_class=1, size=32)
    bad = tmp_path / "f" / SYNTHETIC_CLASSES[0] / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(CdeitError, match="broken.png"):
        read_image_folder(tmp_path / "f")


def test_64px_folder_with_train_val_gives_the_split(tmp_path: Path) -> None:
    folder = write_synthetic_folder(tmp_path / "f", per_class=0, size=64, given=(3, 4))
    photos = read_image_folder(folder)
    assert photos.image_size == 64 and photos.origin is not None
    cfg = PrepareConfig(out=tmp_path / "o", image_folder=folder, generate=True, per_class_per_type=(3, 2, 2))
    plans = make_plan(cfg, photos, TYPES)
    _, _, sources = photos.pooled()
    from_folder = dict(zip(sources, photos.origin, strict=True))
    assert {from_folder[s] for s in plans["train"].source} == {0}
    assert {from_folder[s] for s in plans["val"].source} == {1} == {from_folder[s] for s in plans["test"].source}
    assert not set(plans["val"].source) & set(plans["test"].source)
    with pytest.raises(CdeitError, match="--split"):
        prepare(PrepareConfig(out=tmp_path / "p", image_folder=folder, split="paper", per_class_per_type=(1, 1, 1)))


def test_tiny_imagenet_reader_and_its_corruptions(tiny: Path, tmp_path: Path) -> None:
    photos = read_tiny_imagenet(tiny.parent)
    assert photos.train_images.shape == (12, 64, 64, 3) and photos.test_images.shape == (9, 64, 64, 3)
    assert photos.class_names == ["thing 0", "thing 1", "thing 2"]
    assert list(photos.test_labels[:3]) == [0, 1, 2]  # from val_annotations.txt
    c_root = write_fake_tiny_imagenet_c(tmp_path, tiny)
    arrays, sums = read_tiny_imagenet_c(c_root, ["fog"], tiny)
    assert arrays["fog"].shape == (45, 64, 64, 3) and set(sums) == {"fog"}
    row = arrays["fog"][np.array([2 * 9 + 4])][0].astype(int)  # val image 4 at severity 3: about a quarter
    assert abs(row.mean() - photos.test_images[4].astype(int).mean() / 4) < 4
    cfg = PrepareConfig(out=tmp_path / "o", tiny_imagenet=tiny, tiny_imagenet_c=c_root, per_class_per_type=(2, 1, 1))
    plans = make_plan(cfg, photos, ("clean", "fog"))
    splits = materialise(cfg, plans, photos, arrays)
    assert all(splits[s]["image"].shape[1:] == (64, 64, 3) for s in SPLITS)
    (next((c_root / "fog" / "5").iterdir()) / "val_0.JPEG").unlink(missing_ok=True)
    for wnid in (c_root / "fog" / "5").iterdir():
        for f in wnid.glob("val_0.JPEG"):
            f.unlink()
    with pytest.raises(CdeitError, match="val_0.JPEG"):
        read_tiny_imagenet_c(c_root, ["fog"], tiny)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"cifar10": "A", "cifar100": "B", "generate": True}, "--cifar100"),
        ({"cifar100": "B", "cifar10c": "C"}, "--cifar10c"),
        ({"cifar100": "B", "cifar100c": "C", "generate": True}, "--cifar100c"),
        ({"image_folder": "F", "tiny_imagenet_c": "C"}, "--tiny-imagenet-c"),
        ({"tiny_imagenet": "T", "generate": True, "image_size": 48}, "--image-size"),
        ({"cifar10": "A", "cifar10c": "C", "image_size": 64}, "--image-size"),
        ({"image_folder": "F", "sources": "test"}, "--sources"),
        ({}, "--image-folder"),
    ],
)
def test_conflicting_options_are_refused_before_reading(options: dict, named: str, tmp_path: Path) -> None:
    cfg = PrepareConfig(out=tmp_path / "o", **{k: Path(v) if isinstance(v, str) and k != "sources" else v
                                               for k, v in options.items()})  # fmt: skip
    with pytest.raises(CdeitError, match=named):
        prepare(cfg)
    assert not (tmp_path / "o").exists()
