"""The procedural classes are told apart by shape, texture and layout, not by colour (issue 22, item 2)."""

from __future__ import annotations

import numpy as np

from cdeit.data.synthetic import SYNTHETIC_CLASSES, render


def _nearest_class_mean_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """Fit class means on the first half, score the second half (a linear probe of the colour statistics)."""
    half = len(labels) // 2
    means = np.stack([features[:half][labels[:half] == k].mean(0) for k in range(len(SYNTHETIC_CLASSES))])
    nearest = np.linalg.norm(features[half:, None] - means[None], axis=2).argmin(1)
    return float((nearest == labels[half:]).mean())


def test_neither_mean_colour_nor_hue_predicts_the_class() -> None:
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), 60))  # 600 images, 300 scored: chance 10%, sd ~1.7 points
    images = render(labels, rng).astype(np.float64)
    mean_rgb = images.mean(axis=(1, 2))
    assert _nearest_class_mean_accuracy(mean_rgb, labels) < 0.2
    # the hue of the most saturated pixels (the old design's class colour) as a point on the colour circle
    flat = images.reshape(len(images), -1, 3)
    spread = flat.max(2) - flat.min(2)
    top = np.take_along_axis(flat, spread.argsort(1)[:, -64:, None], 1).mean(1)
    angle = np.arctan2(np.sqrt(3) * (top[:, 1] - top[:, 2]), 2 * top[:, 0] - top[:, 1] - top[:, 2])
    assert _nearest_class_mean_accuracy(np.stack([np.cos(angle), np.sin(angle)], 1), labels) < 0.2


def test_render_is_deterministic_at_any_size() -> None:
    labels = np.arange(10)
    a = render(labels, np.random.default_rng(3), size=64)
    b = render(labels, np.random.default_rng(3), size=64)
    assert a.shape == (10, 64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
