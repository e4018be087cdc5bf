"""The ten CIFAR-10-C corruptions at CIFAR parameters, computed for a whole batch and seeded.

cdeit's own implementation of Hendrycks & Dietterich's generator (ICLR 2019), from its published
description: images go to float in [0, 1], are corrupted, clipped, and rounded to the nearest uint8
level. Every random draw comes from the caller's `np.random.Generator`, so a seed reproduces the output.
Each corruption is vectorised over the batch; only JPEG loops over images (in C, through Pillow).
Algorithms, parameters and deviations from the original: docs/corruptions.md.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import cache
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage, sparse

from cdeit.common.dataset import CORRUPTIONS, SEVERITIES
from cdeit.common.errors import CdeitError
from cdeit.data.frost_photos import frost_crops

NAMES: tuple[str, ...] = CORRUPTIONS[1:]  # the fixed order of image types 1..10
SIZE = 32  # CIFAR images are SIZE x SIZE; fog's fractal and frost's crops are drawn at this size

# Parameters per severity 1..5: the CIFAR-10-C ones of the original generator (ImageNet-C's are harsher).
GAUSSIAN_SIGMA = (0.04, 0.06, 0.08, 0.09, 0.10)  # std of the added noise, in [0, 1] units
SHOT_PHOTONS = (500, 250, 100, 75, 50)  # Poisson(x * c) / c: fewer photons, more noise
DEFOCUS = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))  # (disk radius, alias-blur sigma), px
MOTION = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))  # (radius, sigma) of ImageMagick's MotionBlurImage
MOTION_ANGLE = (-45.0, 45.0)  # degrees, uniform per image
# Zoom factors are np.arange(1, stop, 0.01), as in the original. Floating point makes the first two ranges
# include their stop (1.00..1.06 and 1.00..1.11: 7 and 12 factors, then 16, 21, 26), and makes the last factor
# 1.2500000000000002, which zooms a 26-pixel crop to 33 pixels, not 32. All three are kept: CIFAR-10-C has them.
ZOOM_STOPS = (1.06, 1.11, 1.16, 1.21, 1.26)
FOG = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))  # (strength, wibble decay)
FROST = ((1.0, 0.2), (1.0, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45))  # (image weight, frost weight)
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # added to V in HSV
JPEG_QUALITY = (80, 65, 58, 50, 40)
PLASMA_WIBBLE = 100.0  # initial displacement scale of the diamond-square fractal
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma, as OpenCV's RGB2GRAY used by snow


class SnowParams(NamedTuple):
    """Snow at one severity (the original's seven numbers, named)."""

    mean: float  # snow layer ~ N(mean, std) per pixel
    std: float
    zoom: float  # centre zoom of the layer (bigger flakes)
    threshold: float  # layer values below it become 0
    blur_radius: float  # motion blur of the layer (falling streaks)
    blur_sigma: float
    blend: float  # weight of the image against its brightened version


SNOW = (
    SnowParams(0.1, 0.2, 1.0, 0.6, 8, 3, 0.95),
    SnowParams(0.1, 0.2, 1.0, 0.5, 10, 4, 0.9),
    SnowParams(0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
    SnowParams(0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
    SnowParams(0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
)
SNOW_ANGLE = (-135.0, -45.0)  # degrees: streaks fall downwards


def corrupt(images: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Corrupt a batch of uint8 (N, 32, 32, 3) RGB images with `name` at `severity` 1..5; uint8, same shape.

    Pixels are rounded to the nearest level (CIFAR-10-C truncated; see docs/corruptions.md).
    """
    _check(images, name, severity)
    x = images.astype(np.float32) / 255
    if len(x):
        x = _FUNCTIONS[name](x, int(severity), rng)
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _check(images: np.ndarray, name: str, severity: int) -> None:
    if name not in NAMES:
        raise CdeitError(f"unknown corruption {name!r}; valid names are {', '.join(NAMES)}.")
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or severity not in SEVERITIES:
        raise CdeitError(f"severity {severity!r} is not valid; valid severities are 1, 2, 3, 4 and 5.")
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != (SIZE, SIZE, 3):
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 array (N, {SIZE}, {SIZE}, 3), got {got}")


# --- noise -------------------------------------------------------------------------------------------------


def gaussian_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add N(0, sigma) independently to every pixel and channel (one draw of x's shape)."""
    return x + rng.normal(0.0, GAUSSIAN_SIGMA[severity - 1], x.shape)


def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Photon noise: Poisson(x * c) / c, c photons at full intensity."""
    c = SHOT_PHOTONS[severity - 1]
    return rng.poisson(x * c) / c


# --- colour ------------------------------------------------------------------------------------------------


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue, saturation and value in [0, 1] of an (..., 3) RGB array in [0, 1] (hue 0 and saturation 0 for greys)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(axis=-1)
    delta = v - rgb.min(axis=-1)
    safe = np.where(delta > 0, delta, 1)
    s = np.where(v > 0, delta / np.where(v > 0, v, 1), 0)
    h = np.where(b == v, 4 + (r - g) / safe, np.where(g == v, 2 + (b - r) / safe, (g - b) / safe))
    h = np.where(delta > 0, (h / 6) % 1, 0)
    return h, s, v


# For each hue sextant, which of (v, t, p, q) becomes R, G and B.
_SEXTANT = np.array([[0, 1, 2], [3, 0, 2], [2, 0, 1], [2, 3, 0], [1, 2, 0], [0, 2, 3]])


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The (..., 3) RGB array of hue, saturation and value arrays in [0, 1]; inverse of rgb_to_hsv."""
    h6 = h * 6
    sextant = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    candidates = np.stack([v, t, p, q], axis=-1)
    return np.take_along_axis(candidates, _SEXTANT[sextant], axis=-1)


def brightness(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add c to V in HSV, V clipped to [0, 1] before converting back (as the original does)."""
    h, s, v = rgb_to_hsv(x)
    return hsv_to_rgb(h, s, np.clip(v + BRIGHTNESS[severity - 1], 0, 1))


# --- blurs -------------------------------------------------------------------------------------------------


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """Normalised disk of `radius` on a -8..8 grid (-radius..radius when larger), smoothed by a Gaussian.

    The Gaussian window is 3x3 (5x5 for radius > 8) with reflect-101 borders, as OpenCV's GaussianBlur.
    """
    coords = np.arange(-8, 9) if radius <= 8 else np.arange(-radius, radius + 1)
    window = 3 if radius <= 8 else 5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    taps = np.arange(window) - window // 2
    g = np.exp(-(taps**2) / (2 * alias_blur**2))
    g /= g.sum()
    padded = np.pad(disk, window // 2, mode="reflect")  # numpy's "reflect" is OpenCV's BORDER_REFLECT_101
    rows = sum(w * padded[i : i + len(disk), :] for i, w in enumerate(g))
    return sum(w * rows[:, i : i + len(disk)] for i, w in enumerate(g))


def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Correlate every channel with the disk kernel, reflect-101 borders (OpenCV filter2D's default)."""
    kernel = disk_kernel(*DEFOCUS[severity - 1])
    # Trim the kernel's all-zero border (exact: zero taps add nothing); 17x17 shrinks to 5x5 at most here.
    nonzero = np.flatnonzero(kernel.any(axis=0))
    half = len(kernel) // 2
    reach = int(max(half - nonzero[0], nonzero[-1] - half))
    kernel = kernel[half - reach : half + reach + 1, half - reach : half + reach + 1].astype(np.float32)
    # One correlation over (N, H, W, C); scipy's "mirror" border is OpenCV's BORDER_REFLECT_101.
    return ndimage.correlate(x, kernel[None, :, :, None], mode="mirror")


@cache
def zoom_matrix(zoom: float, size: int = SIZE) -> np.ndarray:
    """(size, size) map of one axis of the original's clipped zoom: centre crop, linear zoom, centre trim.

    Crop ceil(size / zoom) pixels from the centre, zoom them to round(crop * zoom) pixels with linear
    interpolation that aligns the end pixels (scipy.ndimage.zoom, order=1), keep the middle `size`.
    """
    crop = math.ceil(size / zoom)
    top = (size - crop) // 2
    length = round(crop * zoom)
    trim = (length - size) // 2
    src = np.arange(trim, trim + size) * ((crop - 1) / (length - 1))  # source position of each output pixel
    lo = np.minimum(np.floor(src).astype(np.int64), crop - 1)
    frac = src - lo
    hi = np.minimum(lo + 1, crop - 1)
    m = np.zeros((size, size))
    np.add.at(m, (np.arange(size), top + lo), 1 - frac)
    np.add.at(m, (np.arange(size), top + hi), frac)
    return m


def zoom_factors(severity: int) -> np.ndarray:
    """The zoom factors 1, 1.01, ... averaged at `severity` (see ZOOM_STOPS)."""
    return np.arange(1, ZOOM_STOPS[severity - 1], 0.01)


@cache
def _zoom_blur_operator(severity: int) -> sparse.csr_matrix:
    """(SIZE^2, SIZE^2) sparse linear map of flattened pixels: (image + every zoomed copy) / (count + 1)."""
    total = np.eye(SIZE * SIZE)
    factors = zoom_factors(severity)
    for z in factors:
        a = zoom_matrix(float(z))
        total += np.kron(a, a)  # zooming rows and columns of a row-major flattened image
    return sparse.csr_matrix((total / (len(factors) + 1)).astype(np.float32))  # about 1% non-zero


def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Average the image with centre-zoomed copies of itself: one matrix product for the whole batch."""
    n = len(x)
    pixels = x.reshape(n, SIZE * SIZE, 3).transpose(1, 0, 2).reshape(SIZE * SIZE, n * 3)
    out = _zoom_blur_operator(severity) @ pixels
    return out.reshape(SIZE * SIZE, n, 3).transpose(1, 0, 2).reshape(x.shape)


def motion_kernel(radius: float, sigma: float) -> np.ndarray:
    """ImageMagick's one-sided motion-blur weights exp(-i^2 / (2 sigma^2)), i = 0 .. 2 ceil(radius), normalised."""
    i = np.arange(2 * math.ceil(radius) + 1)  # GetOptimalKernelWidth1D for radius > 0
    w = np.exp(-(i**2) / (2 * sigma**2))
    return w / w.sum()


def motion_offsets(angles: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer (row, column) offsets (width, N) of tap i along each angle: ceil(i sin - 0.5), ceil(i cos - 0.5)."""
    theta = np.deg2rad(np.asarray(angles, dtype=np.float64))
    px, py = width * np.sin(theta), width * np.cos(theta)  # written as ImageMagick computes them
    i = np.arange(width)[:, None]
    drow = np.ceil(i * px / np.hypot(px, py) - 0.5).astype(np.int64)
    dcol = np.ceil(i * py / np.hypot(px, py) - 0.5).astype(np.int64)
    return drow, dcol


def motion_blur_batch(x: np.ndarray, radius: float, sigma: float, angles: np.ndarray) -> np.ndarray:
    """Re-implementation of ImageMagick's MotionBlurImage(radius, sigma, angle), one angle per image.

    Output pixel (r, c) = sum_i w_i * x[r + drow_i, c + dcol_i], indices clamped to the edge (ImageMagick's
    default virtual pixels). Angle 0 gathers from the right; positive angles turn towards larger rows.
    """
    n, h, w = x.shape[:3]
    kernel = motion_kernel(radius, sigma)
    drow, dcol = motion_offsets(angles, len(kernel))
    batch = np.arange(n)[:, None, None]
    out = np.zeros_like(x)
    for weight, dr, dc in zip(kernel, drow, dcol, strict=True):  # one shifted copy per tap, every image at once
        rows = np.clip(np.arange(h) + dr[:, None], 0, h - 1)[:, :, None]
        cols = np.clip(np.arange(w) + dc[:, None], 0, w - 1)[:, None, :]
        out += np.float32(weight) * x[batch, rows, cols]
    return out


def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Motion blur along a line at an angle uniform in [-45, 45] degrees, drawn per image."""
    radius, sigma = MOTION[severity - 1]
    angles = rng.uniform(*MOTION_ANGLE, len(x))
    return motion_blur_batch(x, radius, sigma, angles)


# --- weather -----------------------------------------------------------------------------------------------


def plasma_fractal(n: int, wibble_decay: float, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """(n, size, size) diamond-square fractals on a torus, each scaled to [0, 1].

    As in the original, the displacement at each level is wibble * U(-wibble, wibble) (amplitude wibble^2),
    with wibble starting at 100 and divided by `wibble_decay` at every halving of the step.
    """
    maps = np.zeros((n, size, size))
    step, wibble = size, PLASMA_WIBBLE
    while step >= 2:
        half = step // 2
        corners = maps[:, ::step, ::step]
        total = corners + np.roll(corners, -1, axis=1)
        total += np.roll(total, -1, axis=2)  # square step: mean of the four corners around each centre
        maps[:, half::step, half::step] = total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)
        centres = maps[:, half::step, half::step]
        # diamond step: edge midpoints from their two corners and the two centres beside them
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        maps[:, ::step, half::step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        left = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        maps[:, half::step, ::step] = left / 4 + wibble * rng.uniform(-wibble, wibble, left.shape)
        step //= 2
        wibble /= wibble_decay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), np.finfo(np.float64).tiny)


def fog(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add strength * plasma to every channel, then scale by peak / (peak + strength), peak = the image's max."""
    strength, decay = FOG[severity - 1]
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    plasma = plasma_fractal(len(x), decay, rng)[..., None]
    return (x + strength * plasma) * (peak / (peak + strength))


def frost(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blend the image with a random crop of a frost photograph: a * image + b * frost."""
    image_weight, frost_weight = FROST[severity - 1]
    return image_weight * x + frost_weight * (frost_crops(len(x), rng).astype(np.float32) / 255)


def snow(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add a thresholded, zoomed, motion-blurred Gaussian layer and its 180-degree rotation to a brightened image."""
    p = SNOW[severity - 1]
    layer = rng.normal(p.mean, p.std, (len(x), SIZE, SIZE))
    a = zoom_matrix(p.zoom)
    layer = a @ layer @ a.T
    layer[layer < p.threshold] = 0
    # The original hands the layer to ImageMagick as an 8-bit PNG (truncated) and reads 8 bits back.
    layer = np.floor(np.clip(layer, 0, 1) * 255).astype(np.float32) / 255
    angles = rng.uniform(*SNOW_ANGLE, len(x))
    layer = motion_blur_batch(layer[..., None], p.blur_radius, p.blur_sigma, angles)
    layer = np.rint(layer * 255) / 255
    grey = (x @ GREY_WEIGHTS.astype(np.float32))[..., None]
    x = p.blend * x + (1 - p.blend) * np.maximum(x, 1.5 * grey + 0.5)
    return x + layer + layer[:, ::-1, ::-1]


# --- digital -----------------------------------------------------------------------------------------------


def jpeg_compression(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Encode with Pillow's JPEG at the severity's quality and decode, image by image."""
    quality = JPEG_QUALITY[severity - 1]
    images = np.rint(x * 255).astype(np.uint8)  # exact: x came from uint8
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out.astype(np.float32) / 255


_FUNCTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "brightness": brightness,
    "defocus_blur": defocus_blur,
    "zoom_blur": zoom_blur,
    "motion_blur": motion_blur,
    "fog": fog,
    "frost": frost,
    "snow": snow,
    "shot_noise": shot_noise,
    "gaussian_noise": gaussian_noise,
    "jpeg_compression": jpeg_compression,
}
assert tuple(_FUNCTIONS) == NAMES, "every corruption needs a function, in the order of common.dataset"
