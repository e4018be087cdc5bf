"""cdeit's ten corruptions: shapes, seeds, growth with severity, and values checked by hand on tiny inputs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage, stats

from cdeit.common.dataset import CORRUPTIONS
from cdeit.common.errors import CdeitError
from cdeit.data import corruptions as C
from cdeit.data import frost_photos as F
from cdeit.data.corruptions import NAMES, corrupt

RANDOM = ("motion_blur", "fog", "frost", "snow", "shot_noise", "gaussian_noise")
DETERMINISTIC = ("brightness", "defocus_blur", "zoom_blur", "jpeg_compression")


def natural_images(n: int = 6, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients plus a sinusoidal texture and a little noise, inside [13, 242]."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:32, 0:32][..., None] - 15.5) / 31
    base = rng.uniform(0.3, 0.7, (n, 1, 1, 3))
    gx, gy = rng.uniform(-0.25, 0.25, (2, n, 1, 1, 3))
    fx, fy = rng.uniform(1.5, 9, (2, n, 1, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1, 1, 3))
    texture = 0.12 * np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    image = base + gx * xx + gy * yy + texture + rng.normal(0, 0.02, (n, 32, 32, 3))
    return np.rint(np.clip(image, 0.05, 0.95) * 255).astype(np.uint8)


def flat(value: int | tuple[int, int, int], n: int = 1) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, np.uint8), (n, 32, 32, 3)).copy()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return natural_images()


def test_names_are_the_dataset_types_in_order() -> None:
    assert CORRUPTIONS[1:] == NAMES
    assert NAMES == ("brightness", "defocus_blur", "zoom_blur", "motion_blur", "fog", "frost", "snow",
                     "shot_noise", "gaussian_noise", "jpeg_compression")  # fmt: skip
    assert set(RANDOM) | set(DETERMINISTIC) == set(NAMES)


# --- every corruption: shape, dtype, seeds, severity --------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_keeps_shape_and_dtype(name: str, images: np.ndarray) -> None:
    for batch in (images[:3], images[:1], images[:0]):
        out = corrupt(batch, name, 3, np.random.default_rng(0))
        assert out.dtype == np.uint8 and out.shape == batch.shape
    assert not np.array_equal(corrupt(images, name, 5, np.random.default_rng(0)), images)  # it does something


@pytest.mark.parametrize("name", NAMES)
def test_reproducible_under_a_seed(name: str, images: np.ndarray) -> None:
    a = corrupt(images, name, 4, np.random.default_rng(7))
    b = corrupt(images, name, 4, np.random.default_rng(7))
    other = corrupt(images, name, 4, np.random.default_rng(8))
    assert np.array_equal(a, b)
    if name in RANDOM:
        assert not np.array_equal(a, other)
    else:
        assert np.array_equal(a, other)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_ones_treat_each_image_alone(name: str, images: np.ndarray) -> None:
    batch = corrupt(images, name, 5, np.random.default_rng(0))
    single = np.concatenate([corrupt(images[i : i + 1], name, 5, np.random.default_rng(0)) for i in range(3)])
    assert np.array_equal(batch[:3], single)


def _mae(out: np.ndarray, clean: np.ndarray) -> float:
    return float(np.abs(out.astype(np.float64) - clean).mean())


# Severity pairs (a, b) whose mean absolute error must grow, a < b. All consecutive pairs unless said:
# - motion_blur 3 -> 4 is (6, 2) -> (8, 2): the extra taps weigh exp(-13^2 / 8) < 1e-9, so they are equal
#   (checked below);
# - frost mixes less image and more photograph; near mid-grey the two partly cancel, so its error peaks at
#   severity 3 (the test images and real CIFAR images alike). Its strength is checked by decorrelation.
_CONSECUTIVE = ((1, 2), (2, 3), (3, 4), (4, 5))
_GROWS = {name: _CONSECUTIVE for name in NAMES} | {
    "motion_blur": ((1, 2), (2, 3), (4, 5)),
    "frost": ((1, 2), (2, 3)),
}


@pytest.mark.parametrize("name", NAMES)
def test_grows_stronger_with_severity(name: str, images: np.ndarray) -> None:
    outs = {s: corrupt(images, name, s, np.random.default_rng(3)) for s in C.SEVERITIES}
    mae = {s: _mae(out, images) for s, out in outs.items()}
    for a, b in _GROWS[name]:
        assert mae[a] < mae[b], (name, mae)
    assert mae[1] < mae[3] < mae[5] or name == "frost", (name, mae)
    if name == "motion_blur":
        assert np.abs(outs[3].astype(int) - outs[4]).max() <= 1
    if name == "frost":
        decorrelation = [1 - np.corrcoef(outs[s].ravel(), images.ravel())[0, 1] for s in C.SEVERITIES]
        assert np.all(np.diff(decorrelation) > 0), decorrelation


# --- errors ---------------------------------------------------------------------------------------------------


def test_unknown_name_is_one_sentence_listing_the_valid_ones(images: np.ndarray) -> None:
    with pytest.raises(CdeitError, match=r"unknown corruption 'blur'; valid names are brightness, defocus_blur.*"):
        corrupt(images, "blur", 1, np.random.default_rng(0))
    with pytest.raises(CdeitError, match="jpeg_compression"):
        corrupt(images, "clean", 1, np.random.default_rng(0))


@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, True, "3"])
def test_bad_severity_names_the_value_and_the_valid_ones(severity: object, images: np.ndarray) -> None:
    with pytest.raises(CdeitError, match=rf"severity {re.escape(repr(severity))} is not valid; .*1, 2, 3, 4 and 5"):
        corrupt(images, "fog", severity, np.random.default_rng(0))  # type: ignore[arg-type]


def test_numpy_integer_severity_is_accepted(images: np.ndarray) -> None:
    a = corrupt(images, "brightness", np.int64(2), np.random.default_rng(0))
    assert np.array_equal(a, corrupt(images, "brightness", 2, np.random.default_rng(0)))


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 32, 32, 3), np.float32), np.zeros((2, 28, 32, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)]
)
def test_wrong_image_arrays_are_rejected(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"uint8 array \(N, S, S, 3\)"):
        corrupt(bad, "fog", 1, np.random.default_rng(0))


def test_rounds_to_nearest_not_truncates() -> None:
    # black + 0.05 in V is 12.75 levels: 13 when rounded, 12 when truncated as CIFAR-10-C's np.uint8 did
    assert corrupt(flat(0), "brightness", 1, np.random.default_rng(0))[0, 0, 0].tolist() == [13, 13, 13]


# --- brightness -----------------------------------------------------------------------------------------------


def test_brightness_on_known_pixels_by_hand() -> None:
    # (200, 100, 50): V = 200/255, S = 150/200 = 0.75, H = (100 - 50) / 150 / 6 = 1/18, in the first sextant
    # with f = 6H = 1/3, so R = V', G = V'(1 - (1 - f) S) = V'/2, B = V'(1 - S) = V'/4. Severity 1 adds
    # 0.05 to V: V' = 212.75 levels, so (212.75, 106.375, 53.1875) -> (213, 106, 53).
    assert corrupt(flat((200, 100, 50)), "brightness", 1, np.random.default_rng(0))[0, 5, 5].tolist() == [213, 106, 53]
    # (250, 100, 0): S = 1, f = 0.4, G = 0.4 V'. Severity 5 adds 0.3; V is clipped to 1 *before* going back
    # to RGB, so (255, 102, 0); clipping after would give G = 0.4 * (250 + 76.5) = 131.
    assert corrupt(flat((250, 100, 0)), "brightness", 5, np.random.default_rng(0))[0, 0, 0].tolist() == [255, 102, 0]
    # grey stays grey: 90 + 0.15 * 255 = 128.25
    assert corrupt(flat(90), "brightness", 3, np.random.default_rng(0))[0, 0, 0].tolist() == [128, 128, 128]


def test_brightness_scales_each_pixel_by_new_value_over_old(images: np.ndarray) -> None:
    # With H and S fixed, RGB is proportional to V: brightness(x) = x * V' / V.
    x = images.astype(np.float64) / 255
    v = x.max(axis=-1, keepdims=True)
    expected = np.rint(x * np.minimum(v + 0.2, 1) / v * 255)
    assert np.abs(corrupt(images, "brightness", 4, np.random.default_rng(0)) - expected).max() <= 1


def test_hsv_round_trip(images: np.ndarray) -> None:
    x = np.concatenate([images.reshape(-1, 3), [[0, 0, 0], [255, 255, 255], [7, 7, 7], [255, 0, 255]]]) / 255
    h, s, v = C.rgb_to_hsv(x)
    assert np.allclose(C.hsv_to_rgb(h, s, v), x, atol=1e-12)
    assert np.all((h >= 0) & (h < 1) & (s >= 0) & (s <= 1))
    assert np.allclose(C.rgb_to_hsv(np.array([0.0, 0.0, 1.0]))[0], 2 / 3)  # pure blue sits at 240 degrees


# --- noise ----------------------------------------------------------------------------------------------------


def test_gaussian_noise_is_one_explicit_draw(images: np.ndarray) -> None:
    # one rng.normal(0, sigma, shape) draw added to x / 255 (computed in float32, as the implementation does)
    x = images.astype(np.float32) / 255
    expected = np.rint(np.clip(x + np.random.default_rng(11).normal(0, 0.08, images.shape), 0, 1) * 255)
    assert np.array_equal(corrupt(images, "gaussian_noise", 3, np.random.default_rng(11)), expected)


def test_gaussian_noise_std_per_severity() -> None:
    clean = flat(128, n=16)
    for severity, sigma in enumerate((0.04, 0.06, 0.08, 0.09, 0.10), start=1):
        out = corrupt(clean, "gaussian_noise", severity, np.random.default_rng(severity)).astype(np.float64)
        assert abs(out.mean() - 128) < 0.2
        assert abs(out.std() / 255 / sigma - 1) < 0.02


def test_shot_noise_mean_variance_and_photon_lattice() -> None:
    clean = flat(128, n=16)
    x = 128 / 255
    for severity, photons in enumerate((500, 250, 100, 75, 50), start=1):
        out = corrupt(clean, "shot_noise", severity, np.random.default_rng(severity)).astype(np.float64)
        # Exact moments of rint(255 k / c), k ~ Poisson(x c): about x and x / c in [0, 1] units, give or take
        # a few percent from rounding to levels (the photon lattice is 255 / c levels apart).
        k = np.arange(4 * photons)
        levels = np.rint(np.clip(k / photons, 0, 1) * 255)
        pmf = stats.poisson.pmf(k, x * photons)
        mean = (pmf * levels).sum()
        var = (pmf * (levels - mean) ** 2).sum()
        assert abs(mean / 255 - x) < 0.1 / 255 and abs(var / 255**2 / (x / photons) - 1) < 0.06
        assert abs(out.mean() - mean) < 0.3 and abs(out.var() / var - 1) < 0.03  # 4 to 5 standard errors
    # at 50 photons every pixel is k / 50 for a whole number k of photons
    out = corrupt(clean, "shot_noise", 5, np.random.default_rng(0))
    assert set(np.unique(out)) <= set(np.rint(np.arange(51) * 255 / 50).astype(int))


# --- blurs ----------------------------------------------------------------------------------------------------


def _impulse(value: int = 255) -> np.ndarray:
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 16, 16] = value
    return image


def test_defocus_of_an_impulse_is_the_kernel_by_hand() -> None:
    # severity 1: disk of radius 0.3 = the centre pixel only, smoothed by a 3x3 Gaussian of sigma 0.4:
    # g = [e, 1, e] / (1 + 2e), e = exp(-1 / (2 * 0.16)) = 0.04394, so g = [0.04039, 0.91922, 0.04039]:
    # centre 0.84497 * 255 = 215.5 -> 215, edge 0.03713 * 255 = 9.5 -> 9, corner 0.00163 * 255 -> 0.
    out = corrupt(_impulse(), "defocus_blur", 1, np.random.default_rng(0))[0, 15:18, 15:18, 0]
    assert out.tolist() == [[0, 9, 0], [9, 215, 9], [0, 9, 0]]
    # severity 4: radius 1 holds the centre and its 4 neighbours (1/5 each, 51 levels); sigma 0.2 barely smooths
    out = corrupt(_impulse(), "defocus_blur", 4, np.random.default_rng(0))[0, 14:19, 14:19, 1]
    plus = [[0, 0, 0, 0, 0], [0, 0, 51, 0, 0], [0, 51, 51, 51, 0], [0, 0, 51, 0, 0], [0, 0, 0, 0, 0]]
    assert out.tolist() == plus
    # severity 5: radius 1.5 holds the 3x3 block, 255 / 9 = 28.3 each
    out = corrupt(_impulse(), "defocus_blur", 5, np.random.default_rng(0))[0, 14:19, 14:19, 2]
    assert out.tolist() == [[0] * 5] + [[0, 28, 28, 28, 0]] * 3 + [[0] * 5]


def test_defocus_kernels_sum_to_one_and_keep_flat_images() -> None:
    for radius, alias in C.DEFOCUS:
        assert math.isclose(C.disk_kernel(radius, alias).sum(), 1, rel_tol=1e-9)
    assert np.array_equal(corrupt(flat(77), "defocus_blur", 5, np.random.default_rng(0)), flat(77))


def test_defocus_borders_reflect_without_repeating_the_edge() -> None:
    # OpenCV's BORDER_REFLECT_101: column -1 mirrors column 1. A bright column 1 at severity 5 (3x3 box) shows
    # up at column 0 twice (its own column 1 and the mirrored -1): 2/3 of 255 = 170.
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, :, 1] = 255
    out = corrupt(image, "defocus_blur", 5, np.random.default_rng(0))
    assert out[0, 10, :3, 0].tolist() == [170, 85, 85]


def test_zoom_blur_keeps_a_constant_image() -> None:
    for severity in C.SEVERITIES:
        assert np.array_equal(corrupt(flat((3, 100, 250)), "zoom_blur", severity, np.random.default_rng(0)),
                              flat((3, 100, 250)))  # fmt: skip


def _clipped_zoom_reference(image: np.ndarray, zoom: float) -> np.ndarray:
    """The description's zoom via scipy: crop ceil(32 / z) from the centre, zoom linearly by z, trim to 32."""
    crop = int(np.ceil(32 / zoom))
    top = (32 - crop) // 2
    zoomed = ndimage.zoom(image[top : top + crop, top : top + crop], (zoom, zoom, 1), order=1)
    trim = (zoomed.shape[0] - 32) // 2
    return zoomed[trim : trim + 32, trim : trim + 32]


def test_zoom_blur_matches_scipy_zooms(images: np.ndarray) -> None:
    # factors from np.arange(1, stop, 0.01) as the generator wrote them: 1.00..1.06 and 1.00..1.11 by float error
    assert [len(C.zoom_factors(s)) for s in C.SEVERITIES] == [7, 12, 16, 21, 26]
    for severity, stop in zip((1, 5), (1.06, 1.26), strict=True):
        x = images[0].astype(np.float64) / 255
        zooms = [_clipped_zoom_reference(x, z) for z in np.arange(1, stop, 0.01)]
        expected = np.rint((x + sum(zooms)) / (len(zooms) + 1) * 255)
        out = corrupt(images[:1], "zoom_blur", severity, np.random.default_rng(0))[0]
        assert np.abs(out - expected).max() <= 1 and np.mean(out == expected) > 0.99


def test_motion_blur_of_an_impulse_by_hand() -> None:
    # ImageMagick's kernel for radius 6, sigma 1: 13 taps exp(-i^2 / 2), i = 0..12, normalised; their sum
    # is 1.75331, so 255 * w = 145.4, 88.2, 19.7, 1.6, 0.05 -> 145, 88, 20, 2, 0. Output (r, c) gathers
    # x[r + round(i sin a), c + round(i cos a)]: at angle 0 the impulse trails to its left only.
    x = _impulse().astype(np.float32)[..., :1] / 255
    out = np.rint(C.motion_blur_batch(x, 6, 1.0, np.array([0.0])) * 255)[0, :, :, 0]
    assert out[16, 10:20].tolist() == [0, 0, 0, 2, 20, 88, 145, 0, 0, 0]
    assert out.sum() == 145 + 88 + 20 + 2
    # at 90 degrees it trails upwards
    out = np.rint(C.motion_blur_batch(x, 6, 1.0, np.array([90.0])) * 255)[0, :, :, 0]
    assert out[12:18, 16].tolist() == [0, 2, 20, 88, 145, 0] and out[:, 15].sum() == 0
    # at 45 degrees the offsets are ceil(i * 0.7071 - 0.5) = 0, 1, 1, 2, 3: taps 1 and 2 land on one pixel
    out = np.rint(C.motion_blur_batch(x, 6, 1.0, np.array([45.0])) * 255)[0, :, :, 0]
    assert [out[16, 16], out[15, 15], out[14, 14], out[13, 13]] == [145, 108, 2, 0]


def test_motion_kernel_widths_and_weights() -> None:
    # ImageMagick: width 2 ceil(radius) + 1 taps exp(-i^2 / (2 sigma^2)), normalised
    widths = [len(C.motion_kernel(r, s)) for r, s in C.MOTION + tuple((p.blur_radius, p.blur_sigma) for p in C.SNOW)]
    assert widths == [13, 13, 13, 17, 19, 17, 21, 21, 25, 29]
    w = C.motion_kernel(14, 12)  # snow severity 5: the last tap still counts, exp(-28^2 / 288) = 0.0657
    assert math.isclose(w.sum(), 1) and math.isclose(w[28] / w[0], 0.06571, rel_tol=1e-3)


def test_motion_blur_matches_a_pixel_by_pixel_reference() -> None:
    rng = np.random.default_rng(5)
    x = rng.random((3, 6, 7, 2))
    angles = np.array([-40.0, 10.0, 33.0])
    radius, sigma = 4, 1.5
    weights = np.exp(-(np.arange(9) ** 2) / (2 * sigma**2))
    weights /= weights.sum()
    expected = np.zeros_like(x)
    for n, angle in enumerate(angles):
        for r in range(6):
            for c in range(7):
                for i, w in enumerate(weights):
                    dr = math.ceil(i * math.sin(math.radians(angle)) - 0.5)
                    dc = math.ceil(i * math.cos(math.radians(angle)) - 0.5)
                    expected[n, r, c] += w * x[n, min(max(r + dr, 0), 5), min(max(c + dc, 0), 6)]
    assert np.allclose(C.motion_blur_batch(x, radius, sigma, angles), expected)


def test_motion_blur_draws_one_angle_per_image(images: np.ndarray) -> None:
    angles = np.random.default_rng(9).uniform(-45, 45, len(images))
    expected = np.rint(np.clip(C.motion_blur_batch(images.astype(np.float32) / 255, 8, 2.0, angles), 0, 1) * 255)
    assert np.array_equal(corrupt(images, "motion_blur", 4, np.random.default_rng(9)), expected)
    assert np.array_equal(corrupt(flat(200, n=2), "motion_blur", 5, np.random.default_rng(0)), flat(200, n=2))


# --- weather --------------------------------------------------------------------------------------------------


def _plasma_reference(decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square written point by point on a 32-torus, drawing noise in the same order as the batch version."""
    grid = np.zeros((32, 32))
    step, wibble = 32, 100.0
    while step >= 2:
        half, k = step // 2, 32 // step
        noise = wibble * rng.uniform(-wibble, wibble, (k, k))
        for i in range(k):
            for j in range(k):
                r, c = i * step, j * step
                corners = grid[r, c] + grid[(r + step) % 32, c] + grid[r, (c + step) % 32]
                grid[r + half, c + half] = (corners + grid[(r + step) % 32, (c + step) % 32]) / 4 + noise[i, j]
        for rows, cols in ((0, half), (half, 0)):  # edge midpoints: top edges, then left edges
            noise = wibble * rng.uniform(-wibble, wibble, (k, k))
            for i in range(k):
                for j in range(k):
                    r, c = rows + i * step, cols + j * step
                    around = grid[(r - half) % 32, c] + grid[(r + half) % 32, c]
                    around += grid[r, (c - half) % 32] + grid[r, (c + half) % 32]
                    grid[r, c] = around / 4 + noise[i, j]
        step //= 2
        wibble /= decay
    grid -= grid.min()
    return grid / grid.max()


def test_plasma_fractal_matches_point_by_point_diamond_square() -> None:
    maps = C.plasma_fractal(1, 2.5, np.random.default_rng(4))
    assert np.allclose(maps[0], _plasma_reference(2.5, np.random.default_rng(4)))
    maps = C.plasma_fractal(5, 1.75, np.random.default_rng(0))
    assert np.allclose(maps.min(axis=(1, 2)), 0) and np.allclose(maps.max(axis=(1, 2)), 1)


def test_fog_on_flat_images_by_hand() -> None:
    # out = (x + s p) * m / (m + s) with m the image's max and p spanning exactly [0, 1]. A flat image of
    # 200 levels (x = 0.78431) at severity 1 (s = 0.2): darkest x * x / (x + s) = 0.61515 / 0.98431 = 0.62495,
    # 159.4 levels -> 159; brightest (x + s) * x / (x + s) = x, 200 levels.
    out = corrupt(flat(200, n=3), "fog", 1, np.random.default_rng(0))
    assert out.min(axis=(1, 2, 3)).tolist() == [159] * 3
    assert out.max(axis=(1, 2, 3)).tolist() == [200] * 3
    assert np.all(corrupt(flat(0, n=2), "fog", 5, np.random.default_rng(0)) == 0)  # black has no fog to scale
    assert np.all(out[..., 0] == out[..., 2])  # the same fog on every channel
    # m is the maximum over the whole image, not per channel: green 100 of (200, 100, 50) scales by
    # 0.78431 / 0.98431 at least, 79.7 -> 80 (a per-channel peak would give 100 * 0.39216 / 0.59216 = 66).
    out = corrupt(flat((200, 100, 50)), "fog", 1, np.random.default_rng(0))
    assert out[..., 1].min() == 80 and out[..., 0].max() == 200


def test_fog_never_exceeds_the_image_maximum(images: np.ndarray) -> None:
    for severity in C.SEVERITIES:
        out = corrupt(images, "fog", severity, np.random.default_rng(severity))
        assert np.all(out.max(axis=(1, 2, 3)) <= images.max(axis=(1, 2, 3)))


def test_frost_photos_from_the_installed_package() -> None:
    photos = F.frost_photos()
    # frost1..5 at 20%: 900x600, 560x315 (twice), 527x350, 660x495 pixels originally
    assert [p.shape for p in photos] == [(120, 180, 3), (63, 112, 3), (63, 112, 3), (70, 105, 3), (99, 132, 3)]
    assert all(p.dtype == np.uint8 and not p.flags.writeable for p in photos)
    assert F.frost_photos()[0] is photos[0]  # loaded once
    assert all(p[..., 2].mean() > p[..., 0].mean() for p in photos)  # RGB, not OpenCV's BGR: frost is bluish


def test_frost_missing_files_or_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(F, "_FROST_PHOTOS", {})
    monkeypatch.setattr(F, "_frost_dir", lambda: tmp_path)
    with pytest.raises(CdeitError, match=r"frost1\.png"):
        F.frost_photos()
    monkeypatch.undo()
    monkeypatch.setattr(F, "_FROST_PHOTOS", {})
    monkeypatch.setattr(F.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CdeitError, match="imagecorruptions"):
        corrupt(flat(0), "frost", 1, np.random.default_rng(0))


def _ramp_photos() -> list[np.ndarray]:
    """Five photographs of different sizes whose pixels say where they are: (row, column, 40 * photo)."""
    photos = []
    for k, (h, w) in enumerate([(40, 50), (33, 90), (70, 36), (32, 32), (60, 61)]):
        rows, cols = np.mgrid[0:h, 0:w]
        photos.append(np.stack([rows, cols, np.full((h, w), 40 * k)], axis=-1).astype(np.uint8))
    return photos


def test_frost_crops_are_whole_windows_of_the_first_five_photos(monkeypatch: pytest.MonkeyPatch) -> None:
    photos = _ramp_photos()
    monkeypatch.setattr(F, "_FROST_PHOTOS", {F.FROST_SCALE: photos})
    crops = F.frost_crops(400, np.random.default_rng(0))
    seen = set()
    for crop in crops:
        top, left, k = (int(v) for v in crop[0, 0])
        assert np.array_equal(crop, photos[k // 40][top : top + 32, left : left + 32])
        seen.add(k // 40)
    assert seen == {0, 1, 2, 3, 4}
    assert crops[crops[:, 0, 0, 2] == 0, 0, 0, 0].max() == 40 - 32  # photo 0's last window is reachable too


def test_frost_blend_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(F, "_FROST_PHOTOS", {F.FROST_SCALE: [np.full((40, 40, 3), 200, np.uint8)] * 5})
    # severity 4: 0.85 * 100 + 0.4 * 200 = 165; severity 1: 1.0 * 240 + 0.2 * 200 = 280 -> clipped to 255
    assert np.all(corrupt(flat(100, n=2), "frost", 4, np.random.default_rng(0)) == 165)
    assert np.all(corrupt(flat(240, n=2), "frost", 1, np.random.default_rng(0)) == 255)


class _StubRng:
    """Stands in for np.random.Generator where a test needs chosen draws: a given snow layer and angles."""

    def __init__(self, layer: np.ndarray, angle: float):
        self.layer, self.angle = layer, angle

    def normal(self, loc: float, scale: float, size: tuple[int, ...]) -> np.ndarray:
        return np.broadcast_to(self.layer, size).copy()

    def uniform(self, low: float, high: float, size: int) -> np.ndarray:
        assert low <= self.angle <= high
        return np.full(size, self.angle)


def test_snow_brightening_by_hand() -> None:
    # With no snow layer, snow only brightens: blend * x + (1 - blend) * max(x, 1.5 * grey + 0.5).
    # (51, 102, 153) = (0.2, 0.4, 0.6): grey = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6 = 0.363, so 1.5 grey + 0.5
    # = 1.0445; severity 2 (blend 0.9) gives (0.28445, 0.46445, 0.64445) * 255 = (72.5, 118.4, 164.3).
    rng = _StubRng(np.zeros((32, 32)), -90.0)
    assert corrupt(flat((51, 102, 153)), "snow", 2, rng)[0, 3, 3].tolist() == [73, 118, 164]


def test_snow_flake_falls_downwards_and_is_mirrored() -> None:
    # One flake of 0.61 at (5, 20) on black, severity 1 (zoom 1, threshold 0.6, blur radius 8 sigma 3, blend
    # 0.95), angle -90: the layer goes to 8 bits as the original's PNG did (floor(155.55) = 155 levels), the
    # streak runs down from the flake with weights exp(-i^2 / 18) / sum over i = 0..16, is read back as 8 bits,
    # and the layer rotated by 180 degrees adds the same streak running up from (26, 11).
    layer = np.zeros((32, 32))
    layer[5, 20] = 0.61
    out = corrupt(flat(0), "snow", 1, _StubRng(layer, -90.0))[0, :, :, 0].astype(np.float64)
    w = np.exp(-(np.arange(17) ** 2) / 18)
    w /= w.sum()
    base = 0.05 * 0.5 * 255  # black brightened towards 0.5 with weight 1 - blend: 6.375 levels
    streak = np.rint(base + np.rint(155 * w))
    assert streak[:3].tolist() == [42, 40, 35]  # 6.375 + (36, 34, 29)
    assert not np.array_equal(streak, np.rint(base + np.rint(0.61 * 255 * w)))  # the 8-bit step shows
    assert np.array_equal(out[5:22, 20], streak)
    assert np.array_equal(out[10:27, 11][::-1], out[5:22, 20])
    assert np.all(out[:5, 20] == 6) and np.all(out[:, 0] == 6)


def test_snow_layer_is_zoomed_from_its_centre() -> None:
    # Severity 4 zooms the layer by 2.25: only its central ceil(32 / 2.25) = 15 columns survive, so snow drawn
    # in column 0 disappears; at severity 2 (zoom 1) it stays.
    layer = np.zeros((32, 32))
    layer[:, 0] = 1.0
    for severity, zoomed_away in ((4, True), (2, False)):
        with_snow = corrupt(flat(0), "snow", severity, _StubRng(layer, -60.0))
        without = corrupt(flat(0), "snow", severity, _StubRng(np.zeros((32, 32)), -60.0))
        assert np.array_equal(with_snow, without) == zoomed_away


def test_snow_only_brightens_and_keeps_white(images: np.ndarray) -> None:
    for severity in C.SEVERITIES:
        out = corrupt(images, "snow", severity, np.random.default_rng(severity))
        assert np.all(out >= images)
    assert np.all(corrupt(flat(255, n=2), "snow", 5, np.random.default_rng(0)) == 255)


# --- JPEG -----------------------------------------------------------------------------------------------------


def test_jpeg_keeps_flat_images_flat() -> None:
    # A flat block keeps only its DC coefficient, quantised by at most 16 * 125% = 20 at quality 40: 20 / 8 / 2
    # = 1.25 levels of luma, so a grey stays within 1 level. Colours also pass through chroma (within 3 here).
    for severity in C.SEVERITIES:
        for value, tolerance in ((0, 1), (37, 1), (128, 1), (254, 1), ((120, 60, 200), 3), ((255, 0, 0), 3)):
            out = corrupt(flat(value, n=2), "jpeg_compression", severity, np.random.default_rng(0))
            assert np.all(out == out[0, 0, 0])
            assert np.abs(out.astype(int) - value).max() <= tolerance, (value, severity)


def test_jpeg_uses_the_quality_of_each_severity(images: np.ndarray) -> None:
    def pillow(image: np.ndarray, quality: int) -> np.ndarray:
        import io

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(buffer).convert("RGB"))

    for severity, quality in enumerate((80, 65, 58, 50, 40), start=1):
        out = corrupt(images[:2], "jpeg_compression", severity, np.random.default_rng(0))
        assert np.array_equal(out[1], pillow(images[1], quality))
        assert not np.array_equal(out[1], pillow(images[1], quality + 5))
