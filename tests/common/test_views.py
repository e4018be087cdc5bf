"""common/views.py: draws as a pure function of (seed, i, k), integer rendering, the checksum, the replay order."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cdeit.common.views import (
    MIX_SCALE,
    MODE_CUTMIX,
    MODE_MIXUP,
    MODE_NONE,
    Augmentation,
    ViewParams,
    draw_views,
    image_hash,
    params_rows,
    render_views,
    replay_view,
)

AUG = Augmentation(mixup_prob=0.3, cutmix_prob=0.3)


def _flat(params: ViewParams, rows: np.ndarray, views: np.ndarray) -> ViewParams:
    picked = params_rows(params, rows, views)
    return ViewParams(**{k: torch.from_numpy(np.asarray(v)) for k, v in vars(picked).items()})


def test_draws_are_a_pure_function_of_seed_index_and_view() -> None:
    whole = draw_views(3, np.arange(40), 4, 40, AUG)
    part = draw_views(3, np.arange(10, 15), 2, 40, AUG)  # other samples, fewer views: the same draws
    for name in ViewParams.NAMES:
        assert np.array_equal(getattr(part, name), getattr(whole, name)[10:15, :2]), name
    other = draw_views(4, np.arange(40), 4, 40, AUG)
    assert not np.array_equal(other.mode, whole.mode) and not np.array_equal(other.erase, whole.erase)


def test_draws_follow_the_settings() -> None:
    n = 4000
    p = draw_views(0, np.arange(n), 1, n, AUG)
    modes = np.bincount(p.mode.ravel(), minlength=3) / n
    assert modes[MODE_MIXUP] == pytest.approx(0.3, abs=0.03) and modes[MODE_CUTMIX] == pytest.approx(0.3, abs=0.03)
    erased = p.erase[:, 0, 0, 2] > 0
    assert erased.mean() == pytest.approx(0.25, abs=0.03)
    h, w = p.erase[erased, 0, 0, 2].astype(float), p.erase[erased, 0, 0, 3].astype(float)
    assert ((h * w / 1024 > 0.01) & (h * w / 1024 < 0.36)).all() and (h < 32).all() and (w < 32).all()
    mixup = p.mode[:, 0] == MODE_MIXUP
    assert np.array_equal(p.weight[mixup] * MIX_SCALE, np.round(p.weight[mixup] * MIX_SCALE))
    unmixed = p.mode[:, 0] == MODE_NONE
    assert (p.weight[unmixed] == 1).all() and (p.partner[unmixed, 0] == np.arange(n)[unmixed]).all()
    assert (p.erase[unmixed, 0, 1] == 0).all()  # no partner, no partner box
    cut = p.mode[:, 0] == MODE_CUTMIX
    box = p.box[cut, 0].astype(float)
    assert np.allclose(p.weight[cut, 0], 1 - (box[:, 1] - box[:, 0]) * (box[:, 3] - box[:, 2]) / 1024)
    none = draw_views(0, np.arange(n), 1, n, Augmentation(erasing_prob=0.0, mixup_prob=0.0))
    assert (none.mode == MODE_NONE).all() and (none.erase == 0).all()


def test_render_blends_pastes_and_erases_with_integers() -> None:
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    zero = torch.zeros(3, 2, 4, dtype=torch.int16)
    params = ViewParams(
        partner=torch.tensor([0, 4, 5]),
        mode=torch.tensor([MODE_NONE, MODE_MIXUP, MODE_CUTMIX], dtype=torch.int8),
        weight=torch.tensor([1.0, 300 / MIX_SCALE, 0.75]),
        box=torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 16, 0, 16]], dtype=torch.int16),
        erase=zero,
    )
    index, view = torch.tensor([0, 1, 2]), torch.zeros(3, dtype=torch.long)
    out = render_views(images, index, view, params, seed=0)
    assert out.dtype == torch.uint8 and torch.equal(out[0], images[0])
    blend = (images[1].long() * 300 + images[4].long() * (MIX_SCALE - 300) + MIX_SCALE // 2) // MIX_SCALE
    assert torch.equal(out[1], blend.to(torch.uint8))
    assert torch.equal(out[2, :, :16, :16], images[5, :, :16, :16]) and torch.equal(out[2, :, 16:], images[2, :, 16:])
    erase = zero.clone()
    erase[0, 0] = torch.tensor([4, 6, 5, 7])  # top, left, height, width of sample 0's box
    erased = render_views(images, index, view, dataclasses.replace(params, erase=erase), seed=0)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[4:9, 6:13] = True
    assert torch.equal(erased[0][:, ~inside], images[0][:, ~inside])
    assert (erased[0][:, inside] != images[0][:, inside]).float().mean() > 0.9  # noise bytes fill the box
    again = render_views(images, index, view, dataclasses.replace(params, erase=erase), seed=0)
    other_seed = render_views(images, index, view, dataclasses.replace(params, erase=erase), seed=1)
    assert torch.equal(again, erased) and not torch.equal(other_seed[0], erased[0])


def test_rendering_from_drawn_parameters_is_deterministic_and_hashed() -> None:
    images = torch.randint(0, 256, (50, 3, 32, 32), dtype=torch.uint8)
    drawn = draw_views(5, np.arange(50), 3, 50, AUG)
    rows, views = np.repeat(np.arange(50), 3), np.tile(np.arange(3), 50)
    flat = _flat(drawn, rows, views)
    a = render_views(images, torch.from_numpy(rows), torch.from_numpy(views), flat, 5)
    b = render_views(images, torch.from_numpy(rows), torch.from_numpy(views), flat, 5)
    assert torch.equal(a, b) and (a != images[torch.from_numpy(rows)]).any()
    hashes = image_hash(a)
    assert len(set(hashes.tolist())) == len(set(map(bytes, a.numpy())))  # distinct images, distinct checksums
    changed = a.clone()
    changed[7, 2, 31, 31] ^= 1  # one bit of one pixel
    assert image_hash(changed)[7] != hashes[7] and torch.equal(image_hash(changed)[:7], hashes[:7])


def test_replay_shows_each_view_once_per_k_epochs() -> None:
    index = torch.arange(100)
    seen = torch.stack([replay_view(9, epoch, index, 4) for epoch in range(8)])  # (epochs, N)
    for start in (0, 4):
        assert (seen[start : start + 4].sort(0).values == torch.arange(4)[:, None]).all()
    assert len(set(seen[0].tolist())) == 4  # one epoch mixes every view


def test_augmentation_defaults_are_the_trainers() -> None:
    from cdeit.train.core.config import TrainConfig

    cfg, aug = TrainConfig(), Augmentation()
    for name in ("erasing_prob", "mixup_prob", "mixup_alpha", "cutmix_prob", "cutmix_alpha"):
        assert getattr(aug, name) == getattr(cfg, name), name
    assert Augmentation.from_attrs(AUG.attrs()) == AUG
    assert AUG.differences(Augmentation()) == ["cutmix_prob 0.3 vs 0"]


def test_provenance_conflicts_compare_views_and_their_settings() -> None:
    from cdeit.common.cache import augmentation_of, provenance_conflicts, views_of

    plain = {"teacher": "t", "weights_hash": "w"}
    viewed = plain | {"views": 2, "view_seed": 0} | AUG.attrs()
    assert views_of(plain) == 0 and augmentation_of(plain) == {} and provenance_conflicts(viewed, dict(viewed)) == []
    assert provenance_conflicts(plain, viewed) == [("views", 0, 2)]  # a plain cache never joins a K-view one
    other = viewed | {"aug_mixup_alpha": 0.5}
    [(key, a, b)] = provenance_conflicts(viewed, other)
    assert key == "augmentation" and a["aug_mixup_alpha"] == 0.8 and b["aug_mixup_alpha"] == 0.5
    assert [k for k, _, _ in provenance_conflicts(viewed, viewed | {"view_seed": 1})] == ["augmentation"]
