"""The per-severity constants of the ten corruptions at three image sizes, one named table each.

Hendrycks & Dietterich published three generators with their own constants: CIFAR-10-C at 32px
(`make_cifar_c.py`), Tiny-ImageNet-C at 64px (`make_tinyimagenet_c.py`) and ImageNet-C at 224px
(`make_imagenet_c.py`), all in github.com/hendrycks/robustness, ImageNet-C/create_c/. Each table below holds
their numbers, in their order (severity 1..5), so anyone can check one against its source; the functions that
use them are data/corruptions.py. A dataset is corrupted with the table of its image size; other sizes take the
nearest table (`params_for`, the rule in docs/corruptions.md).
"""

from __future__ import annotations

import math
from typing import NamedTuple


class SnowParams(NamedTuple):
    """Snow at one severity (the original's seven numbers, named)."""

    mean: float  # snow layer ~ N(mean, std) per pixel
    std: float
    zoom: float  # centre zoom of the layer (bigger flakes)
    threshold: float  # layer values below it become 0
    blur_radius: float  # motion blur of the layer (falling streaks)
    blur_sigma: float
    blend: float  # weight of the image against its brightened version


class CorruptionParams(NamedTuple):
    """One generator's constants; every tuple has one entry per severity 1..5."""

    name: str  # the benchmark these constants made ("CIFAR-10-C", ...)
    image_size: int  # the side of the images that benchmark corrupted
    gaussian_sigma: tuple[float, ...]  # std of the added noise, in [0, 1] units
    shot_photons: tuple[float, ...]  # Poisson(x * c) / c: fewer photons, more noise
    defocus: tuple[tuple[float, float], ...]  # (disk radius, alias-blur sigma), px
    motion: tuple[tuple[float, float], ...]  # (radius, sigma) of ImageMagick's MotionBlurImage
    zoom: tuple[tuple[float, float], ...]  # zoom factors np.arange(1, stop, step): (stop, step)
    fog: tuple[tuple[float, float], ...]  # (strength, wibble decay)
    fractal_size: int  # side of the plasma fractal fog draws (a power of two), cropped to the image
    frost: tuple[tuple[float, float], ...]  # (image weight, frost weight)
    frost_scale: float  # the frost photographs are shrunk by this factor before cropping (cv2.resize, bilinear)
    snow: tuple[SnowParams, ...]
    brightness: tuple[float, ...]  # added to V in HSV
    jpeg_quality: tuple[int, ...]


_ZOOM_1PCT = ((1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01))  # CIFAR-10-C and Tiny-ImageNet-C

CIFAR10_C = CorruptionParams(
    name="CIFAR-10-C",
    image_size=32,
    gaussian_sigma=(0.04, 0.06, 0.08, 0.09, 0.10),
    shot_photons=(500, 250, 100, 75, 50),
    defocus=((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),
    motion=((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5)),
    zoom=_ZOOM_1PCT,
    fog=((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)),
    fractal_size=32,
    frost=((1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    frost_scale=0.2,
    snow=(
        SnowParams(0.1, 0.2, 1.0, 0.6, 8, 3, 0.95),
        SnowParams(0.1, 0.2, 1.0, 0.5, 10, 4, 0.9),
        SnowParams(0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        SnowParams(0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        SnowParams(0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    brightness=(0.05, 0.1, 0.15, 0.2, 0.3),
    jpeg_quality=(80, 65, 58, 50, 40),
)

TINY_IMAGENET_C = CorruptionParams(
    name="Tiny-ImageNet-C",
    image_size=64,
    gaussian_sigma=(0.04, 0.08, 0.12, 0.15, 0.18),
    shot_photons=(250, 100, 50, 30, 15),
    defocus=((0.5, 0.6), (1.0, 0.1), (1.5, 0.1), (2.5, 0.01), (3.0, 0.1)),
    motion=((10, 1.0), (10, 1.5), (10, 2.0), (10, 2.5), (12, 3.0)),
    zoom=_ZOOM_1PCT,
    fog=((0.4, 3.0), (0.7, 3.0), (1.0, 2.5), (1.5, 2.0), (2.0, 1.75)),
    fractal_size=64,
    frost=((1.0, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)),
    frost_scale=0.3,
    snow=(
        SnowParams(0.1, 0.2, 1.0, 0.6, 8, 3, 0.8),
        SnowParams(0.1, 0.2, 1.0, 0.5, 10, 4, 0.8),
        SnowParams(0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
        SnowParams(0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
        SnowParams(0.3, 0.3, 1.25, 0.65, 14, 12, 0.6),
    ),
    brightness=(0.1, 0.2, 0.3, 0.4, 0.5),
    jpeg_quality=(65, 58, 50, 40, 25),
)

IMAGENET_C = CorruptionParams(
    name="ImageNet-C",
    image_size=224,
    gaussian_sigma=(0.08, 0.12, 0.18, 0.26, 0.38),
    shot_photons=(60, 25, 12, 5, 3),
    defocus=((3.0, 0.1), (4.0, 0.5), (6.0, 0.5), (8.0, 0.5), (10.0, 0.5)),
    motion=((10, 3.0), (15, 5.0), (15, 8.0), (15, 12.0), (20, 15.0)),
    zoom=((1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)),
    fog=((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
    fractal_size=256,  # the original draws 256 x 256 and keeps the top-left 224 x 224
    frost=((1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),
    frost_scale=1.0,  # ImageNet-C crops the photographs at full size
    snow=(
        SnowParams(0.1, 0.3, 3.0, 0.5, 10, 4, 0.8),
        SnowParams(0.2, 0.3, 2.0, 0.5, 12, 4, 0.7),
        SnowParams(0.55, 0.3, 4.0, 0.9, 12, 8, 0.7),
        SnowParams(0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        SnowParams(0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
    brightness=(0.1, 0.2, 0.3, 0.4, 0.5),
    jpeg_quality=(25, 18, 15, 10, 7),
)

TABLES: dict[int, CorruptionParams] = {t.image_size: t for t in (CIFAR10_C, TINY_IMAGENET_C, IMAGENET_C)}


def params_for(size: int) -> CorruptionParams:
    """The table of images `size` px wide: its own, else the nearest on a log scale (ties to the smaller)."""
    if size in TABLES:
        return TABLES[size]
    return min(TABLES.values(), key=lambda t: (abs(math.log(size / t.image_size)), t.image_size))


def fractal_side(table: CorruptionParams, size: int) -> int:
    """The side of fog's fractal for `size` px images: the table's, or the next power of two when it is smaller."""
    return max(table.fractal_size, 1 << max(0, math.ceil(math.log2(size))))
