"""Procedural 10-class images in the official CIFAR-10 layout: the embedded default that needs no download.

Each class is a shape, texture or layout (disc, square, stripes, checkerboard, dumbbell, ...) with random
position, size and small rotation, over a gradient background with sensor noise. Colours are drawn per image,
not per class, so colour alone does not name the class. The task is learnable but not trivial once corrupted, which is
enough to run and test the whole pipeline offline. Generated deterministically from a seed.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from cdeit.common.atomic import atomic_path
from cdeit.common.errors import CdeitError

SYNTHETIC_CLASSES = (
    "disc",
    "square",
    "triangle",
    "ring",
    "cross",
    "horizontal_bars",
    "vertical_bars",
    "diagonal_bars",
    "checkerboard",
    "dumbbell",
)
_SUPERSAMPLE = 2  # draw at 64px and average 2x2 blocks for anti-aliased edges


def _masks(label: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Foreground mask (N, S, S) for each image's class, from its local shape coordinates u, v."""
    rr = np.sqrt(u**2 + v**2)
    box = np.maximum(np.abs(u), np.abs(v))
    stripes = np.pi * 2.5
    shapes = [
        rr < 1.0,
        box < 0.8,
        (v > -0.7) & (v < 0.9 - 1.6 * np.abs(u)),
        (rr > 0.55) & (rr < 1.0),
        ((np.abs(u) < 0.3) & (np.abs(v) < 1.0)) | ((np.abs(v) < 0.3) & (np.abs(u) < 1.0)),
        (box < 0.95) & (np.sin(v * stripes) > 0),
        (box < 0.95) & (np.sin(u * stripes) > 0),
        (box < 0.95) & (np.sin((u + v) * stripes / np.sqrt(2)) > 0),
        (box < 0.95) & (np.sin(u * stripes) * np.sin(v * stripes) > 0),
        ((u - 0.55) ** 2 + v**2 < 0.16) | ((u + 0.55) ** 2 + v**2 < 0.16) | ((np.abs(v) < 0.12) & (np.abs(u) < 0.6)),
    ]
    out = np.zeros(u.shape, bool)
    for k, mask in enumerate(shapes):
        out |= mask & (label == k)[:, None, None]
    return out


def render(labels: np.ndarray, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Images (N, size, size, 3) uint8 for the given class ids, all drawn in one batch (32px: CIFAR's size)."""
    n, side = len(labels), size
    size = side * _SUPERSAMPLE
    axis = (np.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    cx, cy = rng.uniform(-0.35, 0.35, (2, n, 1, 1))
    scale = rng.uniform(0.45, 0.7, (n, 1, 1))
    theta = np.deg2rad(rng.uniform(-15, 15, (n, 1, 1)))
    dx, dy = (xx - cx) / scale, (yy - cy) / scale
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    mask = _masks(labels, u, v).astype(np.float32)
    mask = mask.reshape(n, side, _SUPERSAMPLE, side, _SUPERSAMPLE).mean(axis=(2, 4))[..., None]  # (N, S, S, 1)

    # colours drawn per image from one distribution for both layers (random hue, saturation and brightness),
    # the brighter of the two chosen at random for the shape: neither the mean colour nor the hue names the
    # class, only the shape, its texture and its layout do (tests/data/test_synthetic.py)
    fg, bg_a, bg_b = _colour_pair(rng, n)
    ramp = np.linspace(0, 1, side)[None, :, None, None]
    direction = rng.integers(0, 2, (n, 1, 1, 1))
    t = np.where(direction == 0, ramp, ramp.transpose(0, 2, 1, 3))
    background = bg_a[:, None, None] + (bg_b - bg_a)[:, None, None] * t
    image = background * (1 - mask) + fg[:, None, None] * mask + rng.normal(0, 6, (n, side, side, 3))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _colour_pair(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: the shape's colour and the two ends of the background's gradient, (N, 3) RGB each.

    Both layers draw hue and saturation from the same ranges; their brightness is a pair of values at least 0.3
    apart, and which layer gets the brighter one is a coin flip, so the contrast is kept without tying colour to
    the area the shape covers."""
    low = rng.uniform(0.15, 0.55, n)
    high = low + rng.uniform(0.3, 0.45, n)
    swap = rng.random(n) < 0.5
    v_fg, v_bg = np.where(swap, low, high), np.where(swap, high, low)
    fg = _hsv_to_rgb(np.stack([rng.uniform(0, 1, n), rng.uniform(0.2, 0.9, n), v_fg], 1))
    bg_hue, bg_sat = rng.uniform(0, 1, n), rng.uniform(0.2, 0.9, n)
    bg_a = _hsv_to_rgb(np.stack([bg_hue, bg_sat, v_bg], 1))
    shift = rng.uniform(-0.1, 0.1, (n, 1))  # the gradient's other end: a nearby colour
    bg_b = _hsv_to_rgb(np.clip(np.stack([(bg_hue + shift[:, 0]) % 1, bg_sat, v_bg + shift[:, 0]], 1), 0, 1))
    return fg, bg_a, bg_b


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """(N, 3) HSV in [0, 1] to (N, 3) RGB in [0, 255]."""
    h, s, v = hsv[:, 0] * 6, hsv[:, 1], hsv[:, 2]
    k = (np.array([5, 3, 1])[None, :] + h[:, None]) % 6  # the standard closed form
    rgb = v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)
    return rgb * 255


def write_synthetic_cifar(
    out: str | Path, train_per_class: int = 600, test_per_class: int = 100, seed: int = 0
) -> Path:
    """Write `OUT/cifar-10-batches-py/` (5 train batches, test batch, meta) with procedural images."""
    root = Path(out) / "cifar-10-batches-py"
    own = {f"data_batch_{k}" for k in range(1, 6)} | {"test_batch"}  # what a killed synth leaves (no batches.meta)
    if root.is_dir() and (
        theirs := sorted(p.name for p in root.iterdir() if p.name not in own and ".tmp-" not in p.name)
    ):
        raise CdeitError(
            f"{root} already holds a CIFAR-10 folder ({theirs[0]}, ...), which synth would replace; "
            "choose another --to."
        )
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_labels = rng.permutation(np.repeat(np.arange(10), train_per_class))
    test_labels = rng.permutation(np.repeat(np.arange(10), test_per_class))
    train = _render_chunked(train_labels, rng)
    test = _render_chunked(test_labels, rng)
    for k, part in enumerate(np.array_split(np.arange(len(train_labels)), 5), start=1):
        _write_batch(root / f"data_batch_{k}", train[part], train_labels[part], f"training batch {k} of 5")
    _write_batch(root / "test_batch", test, test_labels, "testing batch 1 of 1")
    meta = {b"label_names": [c.encode() for c in SYNTHETIC_CLASSES], b"num_vis": 3072, b"num_cases_per_batch": 0}
    _dump(root / "batches.meta", meta)
    return root


def write_synthetic_folder(
    out: str | Path, per_class: int, size: int = 64, seed: int = 0, given: tuple[int, int] | None = None
) -> Path:
    """Write procedural PNGs as an image folder: `OUT/<class>/NNNN.png`, or with `given=(TRAIN, VAL)` per class,
    `OUT/train/<class>/` and `OUT/val/<class>/` (the layout `cdeit data prepare --image-folder` reads)."""
    from PIL import Image

    out = Path(out)
    rng = np.random.default_rng(seed)
    parts = {"train": given[0], "val": given[1]} if given else {"": per_class}
    for part, n in parts.items():
        labels = np.repeat(np.arange(len(SYNTHETIC_CLASSES)), n)
        for i, (image, y) in enumerate(zip(render(labels, rng, size), labels, strict=True)):
            folder = out / part / SYNTHETIC_CLASSES[y]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{i:05d}.png")
    return out


def _render_chunked(labels: np.ndarray, rng: np.random.Generator, chunk: int = 4096) -> np.ndarray:
    return np.concatenate([render(labels[i : i + chunk], rng) for i in range(0, len(labels), chunk)])


def _write_batch(path: Path, images: np.ndarray, labels: np.ndarray, name: str) -> None:
    data = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # HWC -> channel-major rows
    batch = {
        b"batch_label": name.encode(),
        b"labels": [int(y) for y in labels],
        b"data": np.ascontiguousarray(data),
        b"filenames": [f"synthetic_{i:06d}.png".encode() for i in range(len(labels))],
    }
    _dump(path, batch)


def _dump(path: Path, obj: object) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)
