"""Readers of the released CIFAR-10 / CIFAR-10-C files: layouts, and one clear error per bad input."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from cdeit.common.errors import CdeitError
from cdeit.data.sources import read_cifar10, read_cifar10c
from cdeit.data.synthetic import SYNTHETIC_CLASSES, render, write_synthetic_cifar
from tests.conftest import write_fake_cifar10c


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("c10")
    write_synthetic_cifar(root, train_per_class=10, test_per_class=4, seed=1)
    return root


def test_reads_official_layout_channel_major(cifar: Path) -> None:
    c = read_cifar10(cifar)
    assert c.train_images.shape == (100, 32, 32, 3) and c.test_images.shape == (40, 32, 32, 3)
    assert c.train_images.dtype == np.uint8 and c.train_labels.dtype == np.int64
    assert np.bincount(c.train_labels).tolist() == [10] * 10
    assert c.class_names == list(SYNTHETIC_CLASSES)
    # the rows are channel-major: first 1024 bytes are the red plane of image 0
    raw = pickle.loads((cifar / "cifar-10-batches-py" / "data_batch_1").read_bytes(), encoding="bytes")
    assert np.array_equal(raw[b"data"][0, :1024].reshape(32, 32), c.train_images[0, :, :, 0])
    assert set(c.checksums) == {
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    }
    # the folder itself or its parent
    assert np.array_equal(read_cifar10(cifar / "cifar-10-batches-py").test_labels, c.test_labels)


def test_pooled_source_ids(cifar: Path) -> None:
    c = read_cifar10(cifar)
    images, labels, sources = c.pooled()
    assert sources[:3].tolist() == [0, 1, 2] and sources[100] == 50_000
    assert np.array_equal(images[100], c.test_images[0]) and labels[100] == c.test_labels[0]


def test_render_is_deterministic_and_class_dependent() -> None:
    a = render(np.arange(10), np.random.default_rng(3))
    b = render(np.arange(10), np.random.default_rng(3))
    assert np.array_equal(a, b) and a.shape == (10, 32, 32, 3) and a.dtype == np.uint8
    assert not np.array_equal(a, render(np.arange(10), np.random.default_rng(4)))


def _copy(cifar: Path, tmp_path: Path) -> Path:
    shutil.copytree(cifar / "cifar-10-batches-py", tmp_path / "cifar-10-batches-py")
    return tmp_path / "cifar-10-batches-py"


def test_missing_batch_is_named(cifar: Path, tmp_path: Path) -> None:
    root = _copy(cifar, tmp_path)
    (root / "data_batch_3").unlink()
    with pytest.raises(CdeitError, match="data_batch_3 is missing"):
        read_cifar10(tmp_path)


def test_truncated_batch_is_named(cifar: Path, tmp_path: Path) -> None:
    root = _copy(cifar, tmp_path)
    raw = (root / "test_batch").read_bytes()
    (root / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CdeitError, match="test_batch could not be read"):
        read_cifar10(root)


def test_wrong_shape_is_named(cifar: Path, tmp_path: Path) -> None:
    root = _copy(cifar, tmp_path)
    bad = {b"data": np.zeros((5, 100), np.uint8), b"labels": [0] * 5}
    (root / "data_batch_2").write_bytes(pickle.dumps(bad, protocol=4))
    with pytest.raises(CdeitError, match=r"data_batch_2 holds data of shape \(5, 100\)"):
        read_cifar10(root)


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (print, ("pwned",))


def test_pickled_code_is_refused(cifar: Path, tmp_path: Path) -> None:
    root = _copy(cifar, tmp_path)
    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}))
    with pytest.raises(CdeitError, match="data_batch_1 could not be read.*refusing to load builtins.print"):
        read_cifar10(root)


def test_missing_directory() -> None:
    with pytest.raises(CdeitError, match="does not exist"):
        read_cifar10("/nonexistent/cifar")


def test_cifar10c_layout_and_checks(cifar: Path, tmp_path: Path) -> None:
    c = read_cifar10(cifar)
    write_fake_cifar10c(tmp_path, c.test_images, c.test_labels, ["fog", "snow"])
    arrays, sums = read_cifar10c(tmp_path, ["fog", "snow"], c.test_labels)
    assert arrays["fog"].shape == (200, 32, 32, 3) and set(sums) == {"labels.npy", "fog.npy", "snow.npy"}
    # row (s-1)*N + i is test image i at severity s
    assert np.array_equal(arrays["fog"][2 * 40 + 7], np.clip(c.test_images[7].astype(int) + 30, 0, 255))
    with pytest.raises(CdeitError, match="frost.npy is missing"):
        read_cifar10c(tmp_path, ["frost"], c.test_labels)
    with pytest.raises(CdeitError, match="does not match the CIFAR-10 test labels"):
        read_cifar10c(tmp_path, ["fog"], np.roll(c.test_labels, 1))
    np.save(tmp_path / "CIFAR-10-C" / "snow.npy", np.zeros((200, 32, 32), np.uint8))
    with pytest.raises(CdeitError, match=r"snow.npy holds uint8 \(200, 32, 32\)"):
        read_cifar10c(tmp_path, ["snow"], c.test_labels)
    raw = (tmp_path / "CIFAR-10-C" / "fog.npy").read_bytes()
    (tmp_path / "CIFAR-10-C" / "fog.npy").write_bytes(raw[:1000])
    with pytest.raises(CdeitError, match="fog.npy could not be read"):
        read_cifar10c(tmp_path, ["fog"], c.test_labels)
