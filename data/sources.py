"""Readers for the released files: `cifar-10-batches-py/` pickles and `CIFAR-10-C/<name>.npy`.

`Photographs` is what every source reader returns (CIFAR-10 here; CIFAR-100, Tiny-ImageNet and image folders in
their own modules): uint8 images (N, S, S, 3), int64 labels and the class names in label order, in two pools.
Every problem with an input file is one sentence naming the file and what to do.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cdeit.common.dataset import TEST_SOURCE_OFFSET
from cdeit.common.errors import CdeitError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
CIFAR10C_ROWS = 50_000  # 5 severities x 10,000 test images, severity-major


@dataclass
class Photographs:
    """A labelled image set as HWC uint8 arrays in two pools, `train` and `test` (the release's own split).

    Source ids: train image i -> i, test image i -> max(50000, Ntr) + i (CIFAR's 50000 + i; Tiny-ImageNet's
    100000 train images push its val images to 100000 + i). `origin`, when set, is the folder each pooled row
    came from (0 train/, 1 val/, 2 test/) of an image folder whose split is given.
    """

    train_images: np.ndarray  # (Ntr, S, S, 3) uint8
    train_labels: np.ndarray  # (Ntr,) int64
    test_images: np.ndarray  # (Nte, S, S, 3) uint8
    test_labels: np.ndarray  # (Nte,) int64
    class_names: list[str]
    checksums: dict[str, str]
    origin: np.ndarray | None = None  # (Ntr + Nte,) int64 or None: the split is drawn, not given

    @property
    def image_size(self) -> int:
        """S of the (S, S, 3) images."""
        return int(self.train_images.shape[1])

    def pooled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All photographs with their labels and source ids: (images, labels, sources); computed once."""
        if getattr(self, "_pooled", None) is None:
            offset = max(TEST_SOURCE_OFFSET, len(self.train_labels))
            images = np.concatenate([self.train_images, self.test_images])
            labels = np.concatenate([self.train_labels, self.test_labels]).astype(np.int64)
            sources = np.concatenate([np.arange(len(self.train_labels)), offset + np.arange(len(self.test_labels))])
            self._pooled = (images, labels, sources.astype(np.int64))
        return self._pooled


Cifar10 = Photographs  # what read_cifar10 returns, under its old name


class _SafeUnpickler(pickle.Unpickler):
    """CIFAR-10's batches hold dicts of bytes, lists and numpy arrays; refuse any other object."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def md5_of(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def release_dir(path: str | Path, folder: str, title: str) -> Path:
    """Accept either the release's folder (`cifar-10-batches-py/`, `CIFAR-10-C/`) itself or the directory holding it."""
    path = Path(path)
    if (path / folder).is_dir():
        return path / folder
    if not path.is_dir():
        raise CdeitError(f"{title} directory {path} does not exist; run `cdeit data download --to DIR` first.")
    return path


def cifar10_dir(path: str | Path) -> Path:
    """Accept either `cifar-10-batches-py/` itself or the directory that contains it."""
    return release_dir(path, "cifar-10-batches-py", "CIFAR-10")


def load_batch(
    path: Path, label_key: bytes = b"labels", n_classes: int = 10, option: str = "--cifar10"
) -> tuple[np.ndarray, np.ndarray, bytes]:
    """One python-version CIFAR batch (CIFAR-10's `data_batch_i`, CIFAR-100's `train`): (images, labels, bytes)."""
    if not path.is_file():
        folder = "cifar-100-python" if option == "--cifar100" else "cifar-10-batches-py"
        raise CdeitError(
            f"{path} is missing; point {option} at the official `{folder}` folder (or run `cdeit data download`)."
        )
    raw = path.read_bytes()
    try:
        batch = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # truncated or foreign files raise many different exception types
        raise CdeitError(f"{path} could not be read ({type(exc).__name__}: {exc}); download it again.") from None
    if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
        raise CdeitError(f"{path} is not a CIFAR batch (no b'data' / {label_key!r}); download it again.")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise CdeitError(
            f"{path} holds data of shape {data.shape} ({data.dtype}) for {len(labels)} labels; "
            "expected uint8 N x 3072 with N labels, so the file is damaged: download it again."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise CdeitError(f"{path} has labels outside 0..{n_classes - 1}; download it again.")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel-major rows -> HWC
    return np.ascontiguousarray(images), labels, raw


def read_cifar10(path: str | Path) -> Cifar10:
    """Read the official python version of CIFAR-10 (five train batches and the test batch)."""
    root = cifar10_dir(path)
    checksums: dict[str, str] = {}
    images, labels = [], []
    for name in TRAIN_BATCHES:
        x, y, raw = load_batch(root / name)
        images.append(x)
        labels.append(y)
        checksums[name] = hashlib.md5(raw).hexdigest()
    test_x, test_y, raw = load_batch(root / TEST_BATCH)
    checksums[TEST_BATCH] = hashlib.md5(raw).hexdigest()
    class_names = _class_names(root / META)
    return Cifar10(np.concatenate(images), np.concatenate(labels), test_x, test_y, class_names, checksums)


def safe_unpickle(raw: bytes) -> object:
    """Unpickle a CIFAR file with the restricted unpickler (dicts, lists, bytes, numpy arrays only)."""
    return _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()


def _class_names(path: Path) -> list[str]:
    from cdeit.common.dataset import CLASSES

    if not path.is_file():
        return list(CLASSES)
    try:
        meta = _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    except Exception:
        raise CdeitError(f"{path} could not be read; download CIFAR-10 again.") from None
    if len(names) != 10:
        raise CdeitError(f"{path} names {len(names)} classes; cdeit expects the 10 CIFAR-10 classes.")
    return names


def cifar10c_dir(path: str | Path) -> Path:
    """Accept either `CIFAR-10-C/` itself or the directory that contains it."""
    return release_dir(path, "CIFAR-10-C", "CIFAR-10-C")


def read_cifar10c(path: str | Path, names: list[str], test_labels: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
    """Memory-map `<name>.npy` for each corruption and check it against CIFAR-10's test labels.

    Row (s - 1) * 10000 + i is test image i at severity s, so `labels.npy` must equal the test labels
    tiled five times; that check catches a CIFAR-10-C paired with the wrong CIFAR-10.
    """
    return read_cifar_c(cifar10c_dir(path), names, test_labels)


def read_cifar_c(
    root: Path, names: list[str], test_labels: np.ndarray, title: str = "CIFAR-10", option: str = "--cifar10c"
) -> tuple[dict[str, np.ndarray], dict]:
    """CIFAR-10-C or CIFAR-100-C (the same layout, 32px) in `root`, checked against `title`'s test labels."""
    n_test = len(test_labels)
    labels_path = root / "labels.npy"
    labels = _load_npy(labels_path, option)
    if labels.shape != (5 * n_test,):
        raise CdeitError(f"{labels_path} has shape {labels.shape}; expected ({5 * n_test},). Download {title}-C again.")
    if not np.array_equal(labels.astype(np.int64), np.tile(test_labels, 5)):
        raise CdeitError(
            f"{labels_path} does not match the {title} test labels row for row; "
            f"use the {title}-C release that belongs to this {title}."
        )
    arrays, checksums = {}, {"labels.npy": md5_of(labels_path)}
    for name in names:
        file = root / f"{name}.npy"
        arr = _load_npy(file, option)
        if arr.dtype != np.uint8 or arr.shape != (5 * n_test, 32, 32, 3):
            raise CdeitError(
                f"{file} holds {arr.dtype} {arr.shape}; expected uint8 ({5 * n_test}, 32, 32, 3). "
                f"Download {title}-C again."
            )
        arrays[name] = arr
        checksums[f"{name}.npy"] = md5_of(file)
    return arrays, checksums


def _load_npy(path: Path, option: str = "--cifar10c") -> np.ndarray:
    if not path.is_file():
        raise CdeitError(f"{path} is missing; point {option} at the extracted `{path.parent.name}` folder.")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise CdeitError(f"{path} could not be read ({type(exc).__name__}: {exc}); download it again.") from None
