"""The corruption tables per image size against the published generators, their selection, and corruptions at
64px and 224px.

The constants below are typed from github.com/hendrycks/robustness, ImageNet-C/create_c/ (severity 1..5):
make_cifar_c.py (32px), make_tinyimagenet_c.py (64px) and make_imagenet_c.py (224px).
"""

from __future__ import annotations

import numpy as np
import pytest

from cdeit.data import corruption_params as P
from cdeit.data import corruptions as C
from cdeit.data.corruptions import NAMES, corrupt

REFERENCE = {  # field: (make_cifar_c.py, make_tinyimagenet_c.py, make_imagenet_c.py)
    "gaussian_sigma": ([0.04, 0.06, .08, .09, .10], [0.04, 0.08, .12, .15, .18], [.08, .12, 0.18, 0.26, 0.38]),
    "shot_photons": ([500, 250, 100, 75, 50], [250, 100, 50, 30, 15], [60, 25, 12, 5, 3]),
    "defocus": ([(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
                [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)],
                [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)]),
    "motion": ([(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)], [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
               [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)]),
    "zoom": ([(1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)],
             [(1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)],
             [(1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)]),
    "fog": ([(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)], [(.4, 3), (.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)],
            [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)]),
    "fractal_size": (32, 64, 256),  # plasma_fractal(mapsize=...) defaults
    "frost": ([(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
              [(1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)],
              [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)]),
    "frost_scale": (0.2, 0.3, 1.0),  # cv2.resize(frost, (0, 0), fx=..., fy=...); ImageNet-C does not resize
    "snow": ([(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
              (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
             [(0.1, 0.2, 1, 0.6, 8, 3, 0.8), (0.1, 0.2, 1, 0.5, 10, 4, 0.8), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
              (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6)],
             [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
              (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)]),
    "brightness": ([.05, .1, .15, .2, .3], [.1, .2, .3, .4, .5], [.1, .2, .3, .4, .5]),
    "jpeg_quality": ([80, 65, 58, 50, 40], [65, 58, 50, 40, 25], [25, 18, 15, 10, 7]),
}  # fmt: skip
TABLES = (P.CIFAR10_C, P.TINY_IMAGENET_C, P.IMAGENET_C)


@pytest.mark.parametrize("field", sorted(REFERENCE))
def test_tables_match_the_published_generators(field: str) -> None:
    for table, want in zip(TABLES, REFERENCE[field], strict=True):
        got = getattr(table, field)
        assert np.array_equal(np.asarray(got, float), np.asarray(want, float)), (table.name, field)
    assert set(P.CorruptionParams._fields) - {"name", "image_size"} == set(REFERENCE)  # every constant checked


def test_cifar_constants_keep_their_names() -> None:
    assert (P.CIFAR10_C.gaussian_sigma, P.CIFAR10_C.snow, 32) == (C.GAUSSIAN_SIGMA, C.SNOW, C.SIZE)


NEAREST = [(32, "CIFAR-10-C"), (64, "Tiny-ImageNet-C"), (224, "ImageNet-C"), (28, "CIFAR-10-C"), (45, "CIFAR-10-C"),
           (46, "Tiny-ImageNet-C"), (96, "Tiny-ImageNet-C"), (128, "ImageNet-C"), (512, "ImageNet-C")]  # fmt: skip


@pytest.mark.parametrize(("size", "table"), NEAREST)
def test_nearest_table_on_a_log_scale(size: int, table: str) -> None:
    assert P.params_for(size).name == table


def test_zoom_factors_per_table() -> None:
    assert [len(C.zoom_factors(s, P.TINY_IMAGENET_C)) for s in C.SEVERITIES] == [7, 12, 16, 21, 26]
    assert [len(C.zoom_factors(s, P.IMAGENET_C)) for s in C.SEVERITIES] == [12, 16, 11, 13, 11]  # steps 0.02, 0.03


@pytest.mark.parametrize("size", [64, 224])
def test_every_corruption_at_the_tables_own_size(size: int) -> None:
    x = np.random.default_rng(0).integers(20, 236, (2, size, size, 3), dtype=np.uint8)
    for name in NAMES:
        a = corrupt(x, name, 3, np.random.default_rng(1))
        assert a.shape == x.shape and a.dtype == np.uint8, name
        assert np.array_equal(a, corrupt(x, name, 3, np.random.default_rng(1))), name
        assert not np.array_equal(a, x), name


def test_constants_follow_the_size(capsys: pytest.CaptureFixture[str]) -> None:
    flat = np.full((1, 64, 64, 3), 100, np.uint8)
    # brightness adds c to V: 100/255 + 0.3 (Tiny-ImageNet-C, severity 3) vs + 0.15 (CIFAR-10-C at 32px)
    assert abs(int(corrupt(flat, "brightness", 3, np.random.default_rng(0))[0, 0, 0, 0]) - 176.5) < 1
    assert abs(int(corrupt(flat[:, :32, :32], "brightness", 3, np.random.default_rng(0))[0, 0, 0, 0]) - 138.25) < 1
    noisy = corrupt(np.full((4, 224, 224, 3), 128, np.uint8), "gaussian_noise", 1, np.random.default_rng(0))
    assert abs(noisy.astype(float).std() / 255 - 0.08) < 0.003  # ImageNet-C sigma at severity 1 (CIFAR: 0.04)
    C._SAID.discard(40)
    corrupt(np.zeros((1, 40, 40, 3), np.uint8), "fog", 1, np.random.default_rng(0))
    corrupt(np.zeros((1, 40, 40, 3), np.uint8), "frost", 1, np.random.default_rng(0))
    said = capsys.readouterr()
    assert (said.out + said.err).count("40px") == 1  # said once per size


def test_imagenet_frost_crops_full_size_photographs() -> None:
    crops = C.frost_crops(3, np.random.default_rng(0), 224, 1.0)
    assert crops.shape == (3, 224, 224, 3) and crops.dtype == np.uint8
