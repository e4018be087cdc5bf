"""Image folders (one folder per class, as torchvision's ImageFolder) and the one resize rule of every source.

Resize rule: an image that is not S x S is scaled (bicubic, antialiased) so that its shorter side is S, then
centre-cropped to S x S. S is `--image-size` when given (32, 64 or 224), else the one of 32, 64 and 224
nearest to the median shorter side of the folder's images (ties go to the smaller size).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cdeit.common.console import console
from cdeit.common.errors import CdeitError
from cdeit.data.sources import Photographs

IMAGE_SIZES = (32, 64, 224)  # the sizes cdeit's corruptions are defined at (CIFAR-10-C, Tiny-ImageNet-C, ImageNet-C)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's list
GIVEN = ("train", "val", "test")  # subfolders that give the split, as `origin` codes 0, 1, 2


def nearest_size(side: float) -> int:
    """The one of IMAGE_SIZES nearest to `side` pixels (ties to the smaller)."""
    return min(IMAGE_SIZES, key=lambda s: (abs(s - side), s))


def fit(image: object, size: int) -> np.ndarray:
    """A PIL image as (size, size, 3) uint8 RGB: shorter side scaled to `size`, then centre-cropped."""
    from PIL import Image

    img = image.convert("RGB")  # type: ignore[attr-defined]
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return np.asarray(img, dtype=np.uint8)


def fit_array(images: np.ndarray, size: int) -> np.ndarray:
    """Apply the resize rule to an (N, H, W, 3) uint8 array (e.g. CIFAR at `--image-size 64`)."""
    from PIL import Image

    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, img in enumerate(images):
        out[i] = fit(Image.fromarray(img), size)
    return out


def say_resized(count: int, size: int, what: str) -> None:
    """The one console line saying that the resize rule was applied."""
    if count:
        console.print(
            f"{what}: {count:,} images are not {size}x{size}; each is scaled so its shorter side is {size} "
            "and centre-cropped (docs/data.md, the resize rule)."
        )


def decode(path: Path, size: int, option: str) -> np.ndarray:
    """Read one image file through the resize rule, or one sentence naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return fit(img, size)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise CdeitError(f"{path} could not be read as an image ({exc}); remove or replace it ({option}).") from None


def digest(files: Iterable[Path], root: Path) -> str:
    """MD5 over each file's path relative to `root` and its bytes: what the manifest records of a folder."""
    h = hashlib.md5()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)


def _class_folders(root: Path) -> list[str]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise CdeitError(f"{root} holds no class folders; --image-folder wants one folder of images per class.")
    return classes


def _listing(root: Path) -> tuple[list[str], list[tuple[Path, int, int]]]:
    """Class names and (file, label, origin) of every image; origin 0 unless train/ and val/ give the split."""
    if not root.is_dir():
        raise CdeitError(f"--image-folder {root} is not a directory.")
    given = (root / "train").is_dir() and (root / "val").is_dir()
    folders = [(root / g, k) for k, g in enumerate(GIVEN) if (root / g).is_dir()] if given else [(root, 0)]
    classes = _class_folders(folders[0][0])
    files = []
    for folder, origin in folders:
        if extra := sorted(set(_class_folders(folder)) - set(classes)):
            raise CdeitError(f"{folder / extra[0]} is a class missing from {folders[0][0]}; use the same classes.")
        for label, name in enumerate(classes):
            found = _images_in(folder / name) if (folder / name).is_dir() else []
            if not found and origin == 0:
                raise CdeitError(f"{folder / name} holds no images ({', '.join(EXTENSIONS)}); add some or remove it.")
            files += [(f, label, origin) for f in found]
    return classes, files


def _sizes(files: list[tuple[Path, int, int]]) -> list[tuple[int, int]]:
    """(width, height) of every file, from its header alone."""
    from PIL import Image

    sizes = []
    for f, _, _ in files:
        try:
            with Image.open(f) as img:
                sizes.append(img.size)
        except (OSError, ValueError) as exc:
            raise CdeitError(f"{f} could not be read as an image ({exc}); remove or replace it.") from None
    return sizes


def read_image_folder(path: str | Path, image_size: int | None = None) -> Photographs:
    """Every image under `path` (class folders, or train/ val/ [test/] of class folders) at one size S.

    All images go to the train pool; `origin` records the folder of each when train/ and val/ give the split.
    """
    root = Path(path)
    classes, files = _listing(root)
    sizes = _sizes(files)
    size = image_size or nearest_size(float(np.median([min(wh) for wh in sizes])))
    console.print(f"--image-folder {root}: {len(files):,} images of {len(classes)} classes at {size}x{size}.")
    say_resized(sum(1 for wh in sizes if wh != (size, size)), size, str(root))
    images = np.empty((len(files), size, size, 3), np.uint8)
    for i, (f, _, _) in enumerate(files):
        images[i] = decode(f, size, "--image-folder")
    labels = np.array([y for _, y, _ in files], np.int64)
    origin = np.array([o for _, _, o in files], np.int64)
    given = (root / "train").is_dir() and (root / "val").is_dir()
    empty = np.zeros((0, size, size, 3), np.uint8)
    checksums = {"files": digest([f for f, _, _ in files], root), "count": str(len(files))}
    return Photographs(images, labels, empty, np.zeros(0, np.int64), classes, checksums, origin if given else None)
