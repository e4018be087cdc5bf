"""K augmented views per training image: drawn from (seed, i, k), rendered to the same bytes on any device.

The one home of what a view is, shared by `cdeit precompute-teacher --views K` (which shows each view to the
teacher) and `cdeit train` (which replays it to the student). A view of training sample i is sample i with a
random-erasing box, optionally mixed (Mixup blend or CutMix box) with a partner sample j that carries its own
erasing box. Every draw is a pure function of (seed, i, k) through a counter-based integer hash (`mix32`), never
a device RNG stream; `draw_views` makes them on the host in numpy, once, and the cache stores them. `render_views`
turns stored parameters into the 32px uint8 image with integer arithmetic only (erasing fill bytes from the same
hash, Mixup as an integer blend with a weight in 1/MIX_SCALE steps), so a CPU precompute and a GPU training run
produce identical bytes, and `image_hash` gives each rendered view a short checksum the cache stores.
docs/consistent-views.md explains the method.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from cdeit.common.errors import CdeitError

if TYPE_CHECKING:
    import torch

RENDER_VERSION = 1  # bump when render_views or the draws change: caches of another version are refused
MIX_SCALE = 1024  # Mixup weights are multiples of 1 / MIX_SCALE, so the blend is exact integer arithmetic
MASK32 = 0xFFFFFFFF
HASH_PRIME = 2_147_483_647  # 2**31 - 1: image_hash's two sums stay below 2**52, exact in int64
MODE_NONE, MODE_MIXUP, MODE_CUTMIX = 0, 1, 2
MODES = ("none", "mixup", "cutmix")
# Streams of the counter hash: one per random decision of a view (erasing uses ERASE_STREAMS per slot).
S_MODE, S_BETA, S_PARTNER, S_CUT_Y, S_CUT_X, S_REPLAY = 1, 2, 3, 4, 5, 6
S_ERASE, ERASE_STREAMS, S_NOISE, S_HASH = 100, 100, 1_000, 100_000


@dataclass(frozen=True)
class Augmentation:
    """The augmentation a view draws: random erasing then Mixup or CutMix, with the trainer's settings.

    The defaults are TrainConfig's (the paper's Table 1); a test holds them equal. The erasing box follows timm's
    RandomErasing (area 2-33 % of the image, log-uniform aspect 0.3-3.3, up to 10 tries).
    """

    erasing_prob: float = 0.25
    mixup_prob: float = 0.3
    mixup_alpha: float = 0.8
    cutmix_prob: float = 0.0
    cutmix_alpha: float = 1.0
    erasing_min_area: float = 0.02
    erasing_max_area: float = 1 / 3
    erasing_min_aspect: float = 0.3
    erasing_attempts: int = 10

    def check(self) -> Augmentation:
        """One sentence for a probability outside [0, 1] or a non-positive alpha."""
        for name in ("erasing_prob", "mixup_prob", "cutmix_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise CdeitError(f"--{name.replace('_', '-')} must be in [0, 1], not {getattr(self, name)}.")
        if self.mixup_prob + self.cutmix_prob > 1:
            raise CdeitError("--mixup-prob and --cutmix-prob must add up to at most 1.")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if not getattr(self, name) > 0:
                raise CdeitError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}.")
        return self

    def attrs(self) -> dict[str, Any]:
        """The settings as cache attributes (prefixed `aug_`), with the render version and the Mixup step."""
        return {f"aug_{k}": v for k, v in asdict(self).items()} | {
            "aug_render_version": RENDER_VERSION,
            "aug_mix_scale": MIX_SCALE,
        }

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> Augmentation:
        return cls(**{f.name: attrs[f"aug_{f.name}"] for f in fields(cls)})

    def differences(self, other: Augmentation) -> list[str]:
        """`name self vs other` for each setting that differs."""
        a, b = asdict(self), asdict(other)
        return [f"{k} {a[k]:g} vs {b[k]:g}" for k in a if not math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12)]


AUG_KEYS = (*Augmentation().attrs(), "views", "view_seed")  # what a K-view cache records about its views


@dataclass
class ViewParams:
    """The drawn parameters of views (numpy on the host or torch on a device), leading shape (...,) = (n, K).

    partner: int64 index of the sample mixed in (the sample itself when unmixed). mode: int8 MODE_*. weight: float32
    share of the sample's own label (1.0 unmixed; k / MIX_SCALE for Mixup; the area outside the box for CutMix).
    box: int16 (..., 4) CutMix box y0, y1, x0, x1 (zeros otherwise). erase: int16 (..., 2, 4) erasing box top, left,
    height, width of the sample (slot 0) and of its partner (slot 1); height 0: no erasing.
    """

    partner: Any
    mode: Any
    weight: Any
    box: Any
    erase: Any

    NAMES = ("partner", "mode", "weight", "box", "erase")

    def arrays(self) -> dict[str, Any]:
        return {f"view_{k}": getattr(self, k) for k in self.NAMES}

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> ViewParams:
        return cls(**{k: arrays[f"view_{k}"] for k in cls.NAMES})


# --------------------------------------------------------------------------------------------- the counter hash


def mix32(x: Any) -> Any:
    """A 32-bit integer mixing function on int64 arrays (numpy or torch), exact on every device.

    Values stay below 2**32 and each product below 2**63 (multipliers under 2**31), so no step overflows int64.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & MASK32
    return x ^ (x >> 16)


def counter_hash(seed: int, index: Any, view: Any, stream: Any) -> Any:
    """32-bit hash of (seed, index, view, stream): the random number behind every draw, as an int64 array."""
    h = mix32((index * 0 + (seed & MASK32)) ^ 0x5BD1E995)
    h = mix32(h ^ (index & MASK32))
    h = mix32(h ^ (view & MASK32))
    return mix32(h ^ (stream & MASK32))


def uniform(seed: int, index: np.ndarray, view: np.ndarray, stream: int) -> np.ndarray:
    """Uniform float64 in [0, 1) for each (index, view), from the counter hash."""
    return counter_hash(seed, index.astype(np.int64), view.astype(np.int64), np.int64(stream)) / 2.0**32


# --------------------------------------------------------------------------------------------- drawing


def draw_views(seed: int, index: np.ndarray, views: int, count: int, aug: Augmentation, size: int = 32) -> ViewParams:
    """The parameters of views 0..views-1 of each sample in `index` (of a split of `count`), shape (n, views).

    Per view: one decision (Mixup with mixup_prob, else CutMix with cutmix_prob, else neither), a
    Beta(alpha, alpha) weight by the inverse CDF, a partner uniform over the split, and an erasing box for the
    sample and one for its partner, each applied with erasing_prob, drawn as timm's RandomErasing.
    """
    from scipy.special import betaincinv

    i = np.repeat(index.astype(np.int64)[:, None], views, 1)  # (n, K)
    k = np.broadcast_to(np.arange(views, dtype=np.int64), i.shape)
    u = uniform(seed, i, k, S_MODE)
    mode = np.where(u < aug.mixup_prob, MODE_MIXUP, np.where(u < aug.mixup_prob + aug.cutmix_prob, MODE_CUTMIX, 0))
    alpha = np.where(mode == MODE_CUTMIX, aug.cutmix_alpha, aug.mixup_alpha)
    lam = betaincinv(alpha, alpha, uniform(seed, i, k, S_BETA))  # (n, K) float64
    partner = np.minimum((uniform(seed, i, k, S_PARTNER) * count).astype(np.int64), count - 1)
    box, cut_weight = _cutmix_boxes(lam, uniform(seed, i, k, S_CUT_Y), uniform(seed, i, k, S_CUT_X), size)
    weight = np.where(mode == MODE_MIXUP, np.round(lam * MIX_SCALE) / MIX_SCALE, 1.0)
    weight = np.where(mode == MODE_CUTMIX, cut_weight, weight)
    box = np.where((mode == MODE_CUTMIX)[..., None], box, 0)
    erase = np.stack([_erase_boxes(seed, i, k, slot, aug, size) for slot in (0, 1)], axis=2)  # (n, K, 2, 4)
    erase[:, :, 1] *= (mode != MODE_NONE)[..., None]  # an unmixed view has no partner to erase
    return ViewParams(
        partner=np.where(mode == MODE_NONE, i, partner),
        mode=mode.astype(np.int8),
        weight=weight.astype(np.float32),
        box=box.astype(np.int16),
        erase=erase.astype(np.int16),
    )


def _cutmix_boxes(lam: np.ndarray, uy: np.ndarray, ux: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """timm's CutMix box (y0, y1, x0, x1) for weight `lam` and the weight corrected for clipping at the border."""
    ratio = np.sqrt(1.0 - lam)
    cut = (size * ratio).astype(np.int64)
    cy, cx = (uy * size).astype(np.int64), (ux * size).astype(np.int64)
    y0, y1 = np.maximum(cy - cut // 2, 0), np.minimum(cy + (cut + 1) // 2, size)
    x0, x1 = np.maximum(cx - cut // 2, 0), np.minimum(cx + (cut + 1) // 2, size)
    return np.stack([y0, y1, x0, x1], -1), 1.0 - (y1 - y0) * (x1 - x0) / float(size * size)


def _erase_boxes(seed: int, i: np.ndarray, k: np.ndarray, slot: int, aug: Augmentation, size: int) -> np.ndarray:
    """(n, K, 4) erasing boxes top, left, height, width (height 0: none), drawn as timm's RandomErasing."""
    base = S_ERASE + slot * ERASE_STREAMS
    apply = uniform(seed, i, k, base) < aug.erasing_prob
    tries = range(aug.erasing_attempts)
    u_area = np.stack([uniform(seed, i, k, base + 1 + 2 * t) for t in tries], -1)  # (n, K, A)
    u_aspect = np.stack([uniform(seed, i, k, base + 2 + 2 * t) for t in tries], -1)
    area = (aug.erasing_min_area + (aug.erasing_max_area - aug.erasing_min_area) * u_area) * size * size
    lo, hi = math.log(aug.erasing_min_aspect), math.log(1 / aug.erasing_min_aspect)
    aspect = np.exp(lo + (hi - lo) * u_aspect)
    h, w = np.round(np.sqrt(area * aspect)).astype(np.int64), np.round(np.sqrt(area / aspect)).astype(np.int64)
    fits = (h < size) & (w < size)
    first = fits.argmax(-1)[..., None]  # the first attempt that fits, as timm's loop
    h, w = np.take_along_axis(h, first, -1)[..., 0], np.take_along_axis(w, first, -1)[..., 0]
    apply &= fits.any(-1)
    top = (uniform(seed, i, k, base + 90) * (size - h + 1)).astype(np.int64)
    left = (uniform(seed, i, k, base + 91) * (size - w + 1)).astype(np.int64)
    return np.stack([top, left, h, w], -1) * apply[..., None]


def replay_view(seed: int, epoch: int, index: torch.Tensor, views: int) -> torch.Tensor:
    """The view trained at `epoch` for each sample: (epoch + offset_i) mod K, each view once per K epochs.

    The per-sample offset (from the counter hash) spreads the views so one epoch mixes all K of them.
    """
    import torch

    offset = counter_hash(seed, index.long(), torch.zeros_like(index, dtype=torch.long), S_REPLAY)
    return (offset + epoch) % views


# --------------------------------------------------------------------------------------------- rendering


def render_views(
    images: torch.Tensor, index: torch.Tensor, view: torch.Tensor, params: ViewParams, seed: int
) -> torch.Tensor:
    """The 32px uint8 images (B, 3, H, W) of views `view` of samples `index`, from stored parameters.

    `images` is the whole split (N, 3, H, W) uint8 on the device (a partner can be any sample); `params` holds
    one row per batch element (partner (B,), mode (B,), weight (B,), box (B, 4), erase (B, 2, 4)) on that device.
    Integer arithmetic only, so every device gives the same bytes.
    """
    import torch

    own = _erase(images[index], params.erase[:, 0], seed, index, view, 0)
    other = _erase(images[params.partner], params.erase[:, 1], seed, index, view, 1)
    w = torch.round(params.weight.double() * MIX_SCALE).long()[:, None, None, None]  # exact: weight is k / MIX_SCALE
    blend = (own.long() * w + other.long() * (MIX_SCALE - w) + MIX_SCALE // 2) // MIX_SCALE
    mode = params.mode.long()[:, None, None, None]
    inside = _box_mask(params.box.long(), own.shape[-2:], own.device)  # (B, 1, H, W)
    out = torch.where(mode == MODE_MIXUP, blend.to(torch.uint8), own)
    return torch.where((mode == MODE_CUTMIX) & inside, other, out)


def _box_mask(box: torch.Tensor, hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(B, 1, H, W) bool: inside the box y0, y1, x0, x1 of each image."""
    import torch

    ys = torch.arange(hw[0], device=device)[None, :, None]
    xs = torch.arange(hw[1], device=device)[None, None, :]
    y0, y1, x0, x1 = (box[:, j, None, None] for j in range(4))
    return ((ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1))[:, None]


def _erase(
    images: torch.Tensor, erase: torch.Tensor, seed: int, index: torch.Tensor, view: torch.Tensor, slot: int
) -> torch.Tensor:
    """Fill each image's erasing box (top, left, height, width) with per-pixel bytes from the counter hash."""
    import torch

    b, c, h, w = images.shape
    e = erase.long()
    box = torch.stack([e[:, 0], e[:, 0] + e[:, 2], e[:, 1], e[:, 1] + e[:, 3]], 1)
    inside = _box_mask(box, (h, w), images.device)
    pixel = torch.arange(c * h * w, device=images.device)[None]  # (1, C*H*W)
    stream = S_NOISE + slot * c * h * w + pixel
    noise = counter_hash(seed, index.long()[:, None], view.long()[:, None], stream) & 0xFF  # (B, C*H*W)
    return torch.where(inside, noise.view(b, c, h, w).to(torch.uint8), images)


def image_hash(images: torch.Tensor) -> torch.Tensor:
    """(B,) int64 checksum of uint8 images (B, ...): two sums of pixel x fixed weight mod 2**31 - 1.

    Exact integer arithmetic (every product and sum stays below 2**52), so it is the same on every device; any
    change of one pixel changes it. A checksum of the rendering, not a cryptographic hash (the shard's sha256
    guards the file).
    """
    import torch

    flat = images.reshape(images.shape[0], -1).long()  # (B, P)
    pos = torch.arange(flat.shape[1], device=images.device)
    one = counter_hash(0, pos, pos * 0, S_HASH) % HASH_PRIME + 1
    two = counter_hash(0, pos, pos * 0, S_HASH + 1) % HASH_PRIME + 1
    a = ((flat + 1) * one).sum(1) % HASH_PRIME
    b = ((flat + 1) * two).sum(1) % HASH_PRIME
    return a * (HASH_PRIME + 1) + b


def params_rows(params: ViewParams, rows: Any, view: Any) -> ViewParams:
    """The parameters of (row, view) pairs from tables of shape (N, K, ...): one row per pair."""
    return ViewParams(**{k: getattr(params, k)[rows, view] for k in ViewParams.NAMES})


def split_tensors(data_dir: Any, split: str, device: Any, names: tuple[str, ...] = ("image",)) -> dict[str, Any]:
    """A whole split on `device`: `image` (N, 3, 32, 32) uint8 and any int64 fields in `names`, in index order.

    Views mix a sample with any partner, so precompute and train hold the split's images on the device
    (3 KiB per image: 1.5 GiB for 500,000).
    """
    import torch

    from cdeit.common.dataset import beton_path, read_split

    arrays = read_split(beton_path(data_dir, split), fields=names)
    out = {k: torch.from_numpy(v).to(device) for k, v in arrays.items() if k != "image"}
    if "image" in arrays:
        out["image"] = torch.from_numpy(arrays["image"]).permute(0, 3, 1, 2).contiguous().to(device)
    return out


def view_batches(params: ViewParams, index: np.ndarray, batch: int) -> Any:
    """(rows, views, parameters) of every (sample, view) of a shard in chunks of `batch`: sample-major order.

    `params` has shape (n, K) for samples `index` (n,); yields numpy rows (b,), views (b,) and flat ViewParams.
    """
    n, k = params.mode.shape
    rows, views = np.repeat(np.arange(n), k), np.tile(np.arange(k), n)
    for lo in range(0, n * k, batch):
        r, v = rows[lo : lo + batch], views[lo : lo + batch]
        yield index[r], v, params_rows(params, r, v)
