"""CIFAR-100 (the python version, `cifar-100-python/`: `train`, `test`, `meta`) and CIFAR-100-C readers.

Fine labels (0..99) with the class names of `meta`'s `fine_label_names`; CIFAR-100-C has CIFAR-10-C's layout.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cdeit.common.errors import CdeitError
from cdeit.data.sources import Photographs, load_batch, read_cifar_c, release_dir, safe_unpickle

N_CLASSES = 100
FOLDER = "cifar-100-python"


def read_cifar100(path: str | Path) -> Photographs:
    """Read `cifar-100-python/` (or its parent): 50,000 train and 10,000 test images with fine labels."""
    root = release_dir(path, FOLDER, "CIFAR-100")
    checksums: dict[str, str] = {}
    parts = []
    for name in ("train", "test"):
        images, labels, raw = load_batch(root / name, b"fine_labels", N_CLASSES, "--cifar100")
        parts.append((images, labels))
        checksums[name] = hashlib.md5(raw).hexdigest()
    names = _fine_names(root / "meta")
    checksums["meta"] = hashlib.md5((root / "meta").read_bytes()).hexdigest()
    (train_x, train_y), (test_x, test_y) = parts
    return Photographs(train_x, train_y, test_x, test_y, names, checksums)


def _fine_names(path: Path) -> list[str]:
    """The 100 fine class names in label order, from `meta`."""
    if not path.is_file():
        raise CdeitError(f"{path} is missing; point --cifar100 at the official `{FOLDER}` folder.")
    try:
        meta = safe_unpickle(path.read_bytes())
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"fine_label_names"]]  # type: ignore[index]
    except Exception:
        raise CdeitError(f"{path} could not be read as CIFAR-100's meta; download CIFAR-100 again.") from None
    if len(names) != N_CLASSES:
        raise CdeitError(f"{path} names {len(names)} fine classes; CIFAR-100 has {N_CLASSES}. Download it again.")
    return names


def read_cifar100c(path: str | Path, names: list[str], test_labels: np.ndarray) -> tuple[dict[str, np.ndarray], dict]:
    """Memory-map CIFAR-100-C's `<name>.npy` files, checked row for row against CIFAR-100's test labels."""
    root = release_dir(path, "CIFAR-100-C", "CIFAR-100-C")
    return read_cifar_c(root, names, test_labels, title="CIFAR-100", option="--cifar100c")
