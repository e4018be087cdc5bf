"""Shared test fixtures: small generated datasets that need no network and no ../shared."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cdeit.common.dataset import CLASSES, CORRUPTIONS
from cdeit.data.writer import write_dataset


def tiny_split(n: int, seed: int, source_offset: int = 0) -> dict[str, np.ndarray]:
    """`n` 32x32 images whose colour depends on the class (learnable), with every field of the contract."""
    rng = np.random.default_rng(seed)
    label = np.arange(n) % len(CLASSES)
    corruption = (np.arange(n) // len(CLASSES)) % len(CORRUPTIONS)
    severity = np.where(corruption == 0, 0, 1 + np.arange(n) % 5)
    base = np.random.default_rng(1234).integers(0, 256, (len(CLASSES), 1, 1, 3))  # same class colours in every split
    noise = rng.normal(0, 40, (n, 32, 32, 3))
    image = np.clip(base[label] + noise, 0, 255).astype(np.uint8)
    return {
        "image": image,
        "label": label.astype(np.int64),
        "corruption": corruption.astype(np.int64),
        "severity": severity.astype(np.int64),
        "index": np.arange(n, dtype=np.int64),
        "source": (source_offset + np.arange(n)).astype(np.int64),
    }


def make_tiny_dataset(out: Path, sizes: tuple[int, int, int] = (220, 110, 110), seed: int = 0) -> Path:
    """Write a complete dataset directory (betons + manifest) with the given train/val/test sizes."""
    splits = {
        name: tiny_split(n, seed + k, source_offset=k * 10_000)
        for k, (name, n) in enumerate(zip(("train", "val", "test"), sizes, strict=True))
    }
    write_dataset(out, splits, {"split_policy": "grouped", "seed": seed, "corruption_source": "test"})
    return out


def make_sourced_dataset(
    out: Path, sources: tuple[int, int, int] = (40, 20, 20), variants: int = 3, seed: int = 0
) -> Path:
    """A dataset whose samples share source photographs, with DATA/sources.beton (one clean image per source).

    Each source appears `variants` times in its split: clean, then brightened copies typed as corruptions
    1, 2, ...; sample order is shuffled, and source ids have gaps, so a join by source differs from any by
    position or index.
    """
    rng = np.random.default_rng(seed)
    base = np.random.default_rng(1234).integers(0, 256, (len(CLASSES), 1, 1, 3))
    splits, clean = {}, {}
    for k, (name, n) in enumerate(zip(("train", "val", "test"), sources, strict=True)):
        ids = 1000 * (k + 1) + 3 * np.arange(n)  # gaps between ids
        label = ids % len(CLASSES)
        images = np.clip(base[label] + rng.normal(0, 40, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
        clean.update({int(i): (img, int(y)) for i, img, y in zip(ids, images, label, strict=True)})
        rows = rng.permutation(n * variants)
        src, var = rows % n, rows // n  # (N,): source position and variant of each sample
        shifted = np.clip(images[src].astype(np.int64) + 25 * var[:, None, None, None], 0, 255).astype(np.uint8)
        splits[name] = {
            "image": shifted, "label": label[src].astype(np.int64), "corruption": var.astype(np.int64),
            "severity": np.where(var == 0, 0, 1).astype(np.int64), "index": np.arange(n * variants, dtype=np.int64),
            "source": ids[src].astype(np.int64),
        }  # fmt: skip
    order = sorted(clean)
    table = {
        "image": np.stack([clean[i][0] for i in order]), "label": np.array([clean[i][1] for i in order], np.int64),
        "corruption": np.zeros(len(order), np.int64), "severity": np.zeros(len(order), np.int64),
        "index": np.arange(len(order), dtype=np.int64), "source": np.array(order, np.int64),
    }  # fmt: skip
    write_dataset(out, splits, {"split_policy": "grouped", "seed": seed, "corruption_source": "test"}, sources=table)
    return out


@pytest.fixture(scope="session", autouse=True)
def _hash_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Verified .beton hashes go to the session's temporary folder, not the user's ~/.cache (subprocesses too)."""
    import os

    from cdeit.common.dataset import HASH_CACHE_ENV

    os.environ[HASH_CACHE_ENV] = str(tmp_path_factory.mktemp("hashes") / "verified-betons.json")
    os.environ["CDEIT_TESTING"] = "1"  # the product's test hooks (CDEIT_TEST_*) are read only under this flag


@pytest.fixture(scope="session")
def sourced_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only dataset with shared sources and sources.beton (copy it before modifying)."""
    return make_sourced_dataset(tmp_path_factory.mktemp("sourced") / "data")


ALL_TARGETS = ("logits", "embedding", "patches", "attention")


@pytest.fixture(scope="session")
def clean_cache(tmp_path_factory: pytest.TempPathFactory, sourced_dataset: Path) -> Path:
    """A clean-view cache of `sourced_dataset` with every target (timm's test_vit, random weights)."""
    from cdeit.precompute.run import precompute_teacher
    from tests.precompute.helpers import config

    out = tmp_path_factory.mktemp("clean") / "cache"
    precompute_teacher(config(sourced_dataset, out, view="clean", targets=ALL_TARGETS, store_features=False))
    return out


@pytest.fixture(scope="session")
def same_feature_cache(tmp_path_factory: pytest.TempPathFactory, sourced_dataset: Path) -> Path:
    """A same-view cache of `sourced_dataset` with every target."""
    from cdeit.precompute.run import precompute_teacher
    from tests.precompute.helpers import config

    out = tmp_path_factory.mktemp("same") / "cache"
    precompute_teacher(config(sourced_dataset, out, targets=ALL_TARGETS, store_features=False))
    return out


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only tiny dataset shared by the whole session (copy it before modifying)."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


def write_fake_cifar10c(out: Path, test_images: np.ndarray, test_labels: np.ndarray, names: list[str]) -> Path:
    """A CIFAR-10-C folder with the released layout (severity-major rows, labels.npy) for the given test set.

    Pixels are the test image brightened by 10 x severity, so each row's source and severity can be checked.
    """
    root = out / "CIFAR-10-C"
    root.mkdir(parents=True, exist_ok=True)
    sev = np.repeat(np.arange(1, 6), len(test_labels))[:, None, None, None]
    rows = np.clip(np.tile(test_images, (5, 1, 1, 1)).astype(np.int64) + 10 * sev, 0, 255).astype(np.uint8)
    for name in names:
        np.save(root / f"{name}.npy", rows)
    np.save(root / "labels.npy", np.tile(test_labels, 5).astype(np.uint8))
    return root


VIEW_OPTIONS = {"views": 2, "cutmix_prob": 0.3}  # K = 2, and CutMix beside Mixup so every kind of view occurs


@pytest.fixture(scope="session")
def views_cache(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    """A K-view cache (`--views 2`, Mixup 0.3, CutMix 0.3, erasing 0.25) of `tiny_dataset` (copy it to change it)."""
    from cdeit.precompute.run import precompute_teacher
    from tests.precompute.helpers import config

    out = tmp_path_factory.mktemp("views") / "cache"
    precompute_teacher(config(tiny_dataset, out, **VIEW_OPTIONS))
    return out
