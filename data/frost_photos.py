"""The frost corruption's photographs: the five of the `imagecorruptions` package, shrunk as the generator does.

Each corruption table shrinks them by its own factor (0.2 for CIFAR-10-C, 0.3 for Tiny-ImageNet-C, none for
ImageNet-C). They ship with the package (pip install imagecorruptions==1.1.2), which cdeit reads without importing it; a
missing package or photograph is one sentence. `frost_crops` draws the random crops `corruptions.frost` blends.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from cdeit.common.dataset import DEFAULT_IMAGE_SIZE
from cdeit.common.errors import CdeitError

SIZE = DEFAULT_IMAGE_SIZE  # crops are SIZE x SIZE by default, the CIFAR image size
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")  # first five of six
FROST_SCALE = 0.2  # CIFAR-10-C shrinks the photographs to 20% before cropping (cv2.resize, bilinear)

_FROST_PHOTOS: dict[float, list[np.ndarray]] = {}  # scale -> photographs, loaded once per process by frost_photos()


def _frost_dir() -> Path:
    """The `frost` folder of the installed imagecorruptions package, found without importing it."""
    spec = importlib.util.find_spec("imagecorruptions")  # importing it fails: it needs the removed pkg_resources
    if spec is None or not spec.submodule_search_locations:
        raise CdeitError(
            "the frost corruption needs the photographs of the `imagecorruptions` package, which is not "
            "installed; install it with `pip install imagecorruptions==1.1.2`."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "frost"


def frost_photos(scale: float = FROST_SCALE) -> list[np.ndarray]:
    """The five frost photographs the generator draws from, RGB uint8, shrunk by `scale` (cached, read-only)."""
    if scale not in _FROST_PHOTOS:
        import cv2  # bilinear resize exactly as the original generator's cv2.resize

        folder = _frost_dir()
        photos = []
        for name in FROST_FILES:
            path = folder / name
            bgr = cv2.imread(str(path)) if path.is_file() else None
            if bgr is None:
                raise CdeitError(
                    f"frost photograph {path} is missing or unreadable; reinstall the `imagecorruptions` "
                    "package (`pip install --force-reinstall imagecorruptions==1.1.2`), which ships it."
                )
            small = bgr if scale == 1 else cv2.resize(bgr, (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
            rgb = np.ascontiguousarray(small[..., ::-1])
            rgb.flags.writeable = False
            photos.append(rgb)
        _FROST_PHOTOS[scale] = photos
    return list(_FROST_PHOTOS[scale])


def frost_crops(n: int, rng: np.random.Generator, size: int = SIZE, scale: float = FROST_SCALE) -> np.ndarray:
    """n random size x size crops (uint8, (n, size, size, 3)), each from a photograph shrunk by `scale`, drawn
    uniformly."""
    photos = frost_photos(scale)
    if small := [p.shape[:2] for p in photos if min(p.shape[:2]) < size]:
        raise CdeitError(f"a frost photograph shrunk by {scale:g} is {small[0]} pixels, too small for {size}px crops.")
    heights = np.array([p.shape[0] for p in photos])
    widths = np.array([p.shape[1] for p in photos])
    stack = np.zeros((len(photos), heights.max(), widths.max(), 3), np.uint8)
    for k, photo in enumerate(photos):
        stack[k, : len(photo), : photo.shape[1]] = photo
    which = rng.integers(0, len(photos), n)
    top = rng.integers(0, heights[which] - size + 1)  # every crop inside the photograph is possible
    left = rng.integers(0, widths[which] - size + 1)
    offsets = np.arange(size)
    rows = (top[:, None] + offsets)[:, :, None]
    cols = (left[:, None] + offsets)[:, None, :]
    return stack[which[:, None, None], rows, cols]
