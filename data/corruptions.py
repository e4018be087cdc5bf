"""The ten corruptions of CIFAR-10-C, Tiny-ImageNet-C and ImageNet-C, at the parameters of the images' size.

cdeit's own implementation of Hendrycks & Dietterich's generator (ICLR 2019), from its published
description: images go to float in [0, 1], are corrupted, clipped, and rounded to the nearest uint8
level. Every random draw comes from the caller's `np.random.Generator`, so a seed reproduces the output.
The constants come from the table of the images' size (data/corruption_params.py: 32, 64 and 224px; the
nearest one for other sizes, said once).
Each corruption is vectorised over the batch; only JPEG loops over images (in C, through Pillow).
Algorithms, parameters and deviations from the original: docs/corruptions.md.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import cache

import numpy as np
from PIL import Image
from scipy import ndimage, sparse

from cdeit.common.dataset import CORRUPTIONS, SEVERITIES
from cdeit.common.errors import CdeitError
from cdeit.data.corruption_params import CIFAR10_C, CorruptionParams, SnowParams, fractal_side, params_for
from cdeit.data.frost_photos import frost_crops

__all__ = ["NAMES", "SnowParams", "corrupt", "corruption_table"]

NAMES: tuple[str, ...] = CORRUPTIONS[1:]  # the fixed order of image types 1..10
SIZE = CIFAR10_C.image_size  # CIFAR images are SIZE x SIZE: the default size of the helpers below

# CIFAR-10-C's constants under their historical names (data/corruption_params.py holds every size's table).
# Zoom factors are np.arange(1, stop, step), as in the original. Floating point makes CIFAR's first two ranges
# include their stop (1.00..1.06 and 1.00..1.11: 7 and 12 factors, then 16, 21, 26), and makes the last factor
# 1.2500000000000002, which zooms a 26-pixel crop to 33 pixels, not 32. All three are kept: CIFAR-10-C has them.
GAUSSIAN_SIGMA, SHOT_PHOTONS = CIFAR10_C.gaussian_sigma, CIFAR10_C.shot_photons
DEFOCUS, MOTION, FOG, FROST, SNOW = CIFAR10_C.defocus, CIFAR10_C.motion, CIFAR10_C.fog, CIFAR10_C.frost, CIFAR10_C.snow
BRIGHTNESS, JPEG_QUALITY = CIFAR10_C.brightness, CIFAR10_C.jpeg_quality
MOTION_ANGLE = (-45.0, 45.0)  # degrees, uniform per image
PLASMA_WIBBLE = 100.0  # initial displacement scale of the diamond-square fractal
GREY_WEIGHTS = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 luma, as OpenCV's RGB2GRAY used by snow
SNOW_ANGLE = (-135.0, -45.0)  # degrees: streaks fall downwards
_SAID: set[int] = set()  # image sizes whose borrowed table has been said once in this process


def corrupt(images: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Corrupt a batch of uint8 (N, S, S, 3) RGB images with `name` at `severity` 1..5; uint8, same shape.

    The constants are those of the S-pixel table (`corruption_table`). Pixels are rounded to the nearest level
    (CIFAR-10-C truncated; see docs/corruptions.md).
    """
    _check(images, name, severity)
    x = images.astype(np.float32) / 255
    if len(x):
        x = _FUNCTIONS[name](x, int(severity), rng, corruption_table(images.shape[1]))
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)


def corruption_table(size: int) -> CorruptionParams:
    """The constants images of `size` px are corrupted with; a size without its own table is said once."""
    table = params_for(size)
    if size != table.image_size and size not in _SAID:
        from cdeit.common.console import console

        _SAID.add(size)
        console.print(f"corruptions: no published table for {size}px images; using {table.name}'s "
                      f"({table.image_size}px), the nearest (docs/corruptions.md).")  # fmt: skip
    return table


def _check(images: np.ndarray, name: str, severity: int) -> None:
    if name not in NAMES:
        raise CdeitError(f"unknown corruption {name!r}; valid names are {', '.join(NAMES)}.")
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or severity not in SEVERITIES:
        raise CdeitError(f"severity {severity!r} is not valid; valid severities are 1, 2, 3, 4 and 5.")
    shape = images.shape if isinstance(images, np.ndarray) else ()
    if images.dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or shape[1] < 2:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 array (N, S, S, 3), got {got}")


# --- noise -------------------------------------------------------------------------------------------------


def gaussian_noise(
    x: np.ndarray, severity: int, rng: np.random.Generator, t: CorruptionParams = CIFAR10_C
) -> np.ndarray:
    """Add N(0, sigma) independently to every pixel and channel (one draw of x's shape)."""
    return x + rng.normal(0.0, t.gaussian_sigma[severity - 1], x.shape)


def shot_noise(x: np.ndarray, severity: int, rng: np.random.Generator, t: CorruptionParams = CIFAR10_C) -> np.ndarray:
    """Photon noise: Poisson(x * c) / c, c photons at full intensity."""
    c = t.shot_photons[severity - 1]
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


def brightness(x: np.ndarray, severity: int, rng: np.random.Generator, t: CorruptionParams = CIFAR10_C) -> np.ndarray:
    """Add c to V in HSV, V clipped to [0, 1] before converting back (as the original does)."""
    h, s, v = rgb_to_hsv(x)
    return hsv_to_rgb(h, s, np.clip(v + t.brightness[severity - 1], 0, 1))


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


def defocus_blur(x: np.ndarray, severity: int, rng: np.random.Generator, t: CorruptionParams = CIFAR10_C) -> np.ndarray:
    """Correlate every channel with the disk kernel, reflect-101 borders (OpenCV filter2D's default)."""
    kernel = disk_kernel(*t.defocus[severity - 1])
    # Trim the kernel's all-zero border (exact: zero taps add nothing); 17x17 shrinks to 5x5 at most at 32px.
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


def zoom_factors(severity: int, t: CorruptionParams = CIFAR10_C) -> np.ndarray:
    """The zoom factors np.arange(1, stop, step) averaged at `severity` (the table's `zoom`)."""
    stop, step = t.zoom[severity - 1]
    return np.arange(1, stop, step)


@cache
def _zoom_blur_operator(severity: int, t: CorruptionParams, size: int) -> sparse.csr_matrix:
    """(size^2, size^2) sparse linear map of flattened pixels: (image + every zoomed copy) / (count + 1).

    Summed as sparse matrices in the order the dense sum ran (identity, then each zoom), so 32px is unchanged.
    """
    total = sparse.identity(size * size, format="csr", dtype=np.float64)
    factors = zoom_factors(severity, t)
    for z in factors:
        a = sparse.csr_matrix(zoom_matrix(float(z), size))
        total = total + sparse.kron(a, a, format="csr")  # zooming rows and columns of a row-major flattened image
    return (total / (len(factors) + 1)).astype(np.float32).tocsr()  # 2 x 2 taps per zoom: about 1% non-zero


def zoom_blur(x: np.ndarray, severity: int, rng: np.random.Generator, t: CorruptionParams = CIFAR10_C) -> np.ndarray:
    """Average the image with centre-zoomed copies of itself: one matrix product for the whole batch."""
    n, size = len(x), x.shape[1]
    pixels = x.reshape(n, size * size, 3).transpose(1, 0, 2).reshape(size * size, n * 3)
    out = _zoom_blur_operator(severity, t, size) @ pixels
    return out.reshape(size * size, n, 3).transpose(1, 0, 2).reshape(x.shape)


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


def motion_blur(x: np.ndarray, severity: int, rng: np.random.Generator, t: CorruptionParams = CIFAR10_C) -> np.ndarray:
    """Motion blur along a line at an angle uniform in [-45, 45] degrees, drawn per image."""
    radius, sigma = t.motion[severity - 1]
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


def fog(x: np.ndarray, severity: int, rng: np.random.Generator, t: CorruptionParams = CIFAR10_C) -> np.ndarray:
    """Add strength * plasma to every channel, then scale by peak / (peak + strength), peak = the image's max."""
    strength, decay = t.fog[severity - 1]
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    size = x.shape[1]
    plasma = plasma_fractal(len(x), decay, rng, fractal_side(t, size))[:, :size, :size, None]
    return (x + strength * plasma) * (peak / (peak + strength))


def frost(x: np.ndarray, severity: int, rng: np.random.Generator, t: CorruptionParams = CIFAR10_C) -> np.ndarray:
    """Blend the image with a random crop of a frost photograph: a * image + b * frost."""
    image_weight, frost_weight = t.frost[severity - 1]
    size = x.shape[1]
    scale = t.frost_scale * size / t.image_size  # the photographs keep their scale relative to the image
    return image_weight * x + frost_weight * (frost_crops(len(x), rng, size, scale).astype(np.float32) / 255)


def snow(x: np.ndarray, severity: int, rng: np.random.Generator, t: CorruptionParams = CIFAR10_C) -> np.ndarray:
    """Add a thresholded, zoomed, motion-blurred Gaussian layer and its 180-degree rotation to a brightened image."""
    p, size = t.snow[severity - 1], x.shape[1]
    layer = rng.normal(p.mean, p.std, (len(x), size, size))
    a = zoom_matrix(p.zoom, size)
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


def jpeg_compression(
    x: np.ndarray, severity: int, rng: np.random.Generator, t: CorruptionParams = CIFAR10_C
) -> np.ndarray:
    """Encode with Pillow's JPEG at the severity's quality and decode, image by image."""
    quality = t.jpeg_quality[severity - 1]
    images = np.rint(x * 255).astype(np.uint8)  # exact: x came from uint8
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer).convert("RGB"))
    return out.astype(np.float32) / 255


_FUNCTIONS: dict[str, Callable[[np.ndarray, int, np.random.Generator, CorruptionParams], np.ndarray]] = {
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
