"""Tiny-ImageNet (`tiny-imagenet-200/`, 64px, 200 classes) and Tiny-ImageNet-C readers.

Labels follow `wnids.txt`'s order, names are the first synonym of each wnid in `words.txt`. The train pool is
`train/<wnid>/images/*.JPEG` (500 per class), the test pool is `val/images/` labelled by `val_annotations.txt`
(50 per class; the release's test images have no labels). Tiny-ImageNet-C holds each val image at five
severities as `<corruption>/<severity>/<wnid>/<val file name>`, read lazily, row (s - 1) * Nval + i.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from cdeit.common.errors import CdeitError
from cdeit.data.image_folder import decode, digest, say_resized
from cdeit.data.sources import Photographs, release_dir

FOLDER = "tiny-imagenet-200"
C_FOLDER = "Tiny-ImageNet-C"
SIZE = 64
SEVERITIES = (1, 2, 3, 4, 5)


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise CdeitError(f"{path} is missing; point --tiny-imagenet at the official `{FOLDER}` folder.")
    return [line.rstrip("\n") for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line]


def _names(root: Path, wnids: list[str]) -> list[str]:
    """First synonym of each wnid in words.txt (the wnid itself where words.txt lacks it)."""
    words = dict(line.split("\t", 1) for line in _lines(root / "words.txt") if "\t" in line)
    return [words.get(w, w).split(",")[0].strip() for w in wnids]


def val_listing(root: Path, wnids: list[str]) -> list[tuple[str, str]]:
    """(file name, wnid) of every val image, in `val_annotations.txt`'s order."""
    path = root / "val" / "val_annotations.txt"
    known = set(wnids)
    rows = []
    for line in _lines(path):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in known:
            raise CdeitError(f"{path} has the line {line[:60]!r}, which names no wnid of wnids.txt; download again.")
        rows.append((parts[0], parts[1]))
    return rows


def read_tiny_imagenet(path: str | Path, image_size: int | None = None) -> Photographs:
    """Decode every train and val image (64px, or `image_size` by the resize rule) with its label."""
    root = release_dir(path, FOLDER, "Tiny-ImageNet")
    wnids = _lines(root / "wnids.txt")
    label_of = {w: k for k, w in enumerate(wnids)}
    train_files = []
    for w in wnids:
        found = sorted((root / "train" / w / "images").glob("*.JPEG"))
        if not found:
            raise CdeitError(f"{root / 'train' / w / 'images'} holds no .JPEG images; download Tiny-ImageNet again.")
        train_files += [(f, label_of[w]) for f in found]
    val_files = [(root / "val" / "images" / name, label_of[w]) for name, w in val_listing(root, wnids)]
    size = image_size or SIZE
    say_resized(len(train_files) + len(val_files) if size != SIZE else 0, size, str(root))
    train_x, train_y = _decode_all(train_files, size)
    val_x, val_y = _decode_all(val_files, size)
    checksums = {
        "wnids.txt": hashlib.md5((root / "wnids.txt").read_bytes()).hexdigest(),
        "val_annotations.txt": hashlib.md5((root / "val" / "val_annotations.txt").read_bytes()).hexdigest(),
        "train": digest([f for f, _ in train_files], root),
        "val": digest([f for f, _ in val_files], root),
    }
    return Photographs(train_x, train_y, val_x, val_y, _names(root, wnids), checksums)


def _decode_all(files: list[tuple[Path, int]], size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.empty((len(files), size, size, 3), np.uint8)
    for i, (f, _) in enumerate(files):
        if not f.is_file():
            raise CdeitError(f"{f} is missing; download Tiny-ImageNet again (--tiny-imagenet).")
        images[i] = decode(f, size, "--tiny-imagenet")
    return images, np.array([y for _, y in files], np.int64)


class CorruptedRows:
    """One Tiny-ImageNet-C corruption as a lazy (5 * Nval, 64, 64, 3) array: rows are decoded when indexed."""

    def __init__(self, files: list[Path], size: int) -> None:
        self.files, self.size = files, size
        self.shape = (len(files), size, size, 3)
        self.dtype = np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(rows))
        out = np.empty((len(rows), self.size, self.size, 3), np.uint8)
        for k, r in enumerate(rows):
            out[k] = decode(self.files[int(r)], self.size, "--tiny-imagenet-c")
        return out


def read_tiny_imagenet_c(
    path: str | Path, names: list[str], tiny: str | Path
) -> tuple[dict[str, CorruptedRows], dict[str, str]]:
    """Check that every val image of `tiny` is present at every severity of each corruption in `names`.

    The checksum of a corruption is an MD5 over its files' relative paths and sizes (hashing 50,000 JPEGs
    per corruption would take longer than the preparation itself).
    """
    root = release_dir(path, C_FOLDER, "Tiny-ImageNet-C")
    tiny_root = release_dir(tiny, FOLDER, "Tiny-ImageNet")
    val = val_listing(tiny_root, _lines(tiny_root / "wnids.txt"))
    arrays, checksums = {}, {}
    for name in names:
        files = [root / name / str(s) / w / f for s in SEVERITIES for f, w in val]
        h = hashlib.md5()
        for f in files:
            try:
                h.update(f"{f.relative_to(root).as_posix()}:{f.stat().st_size}\n".encode())
            except FileNotFoundError:
                raise CdeitError(
                    f"{f} is missing; point --tiny-imagenet-c at the extracted `{C_FOLDER}` folder that belongs to "
                    "this Tiny-ImageNet."
                ) from None
        arrays[name] = CorruptedRows(files, SIZE)
        checksums[name] = h.hexdigest()
    return arrays, checksums
