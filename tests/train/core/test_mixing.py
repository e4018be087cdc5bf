"""Targets under augmentation: smoothing, teacher targets, Mixup/CutMix pairing and weights, random erasing."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from cdeit.common.errors import CdeitError
from cdeit.train.core.mixing import RandomErasing, Targets, make_targets, mix_batch, mix_with, sample_beta

B = 8


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(distill: str = "soft", seed: int = 0) -> tuple[torch.Tensor, Targets]:
    g = gen(seed)
    images = torch.randn(B, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (B,), generator=g)
    corruption = torch.randint(0, 11, (B,), generator=g)
    teacher = 3 * torch.randn(B, 10, generator=g)
    return images, make_targets(labels, corruption, teacher, distill=distill, tau=3.0, smoothing=0.1)


def test_make_targets() -> None:
    labels, corruption = torch.tensor([0, 3]), torch.tensor([10, 0])
    teacher = torch.tensor([[2.0, 1.0] + [0.0] * 8, [0.0] * 9 + [5.0]])
    soft = make_targets(labels, corruption, teacher, distill="soft", tau=2.0, smoothing=0.1)
    assert soft.label[0, 0] == pytest.approx(0.91) and soft.label[0, 1] == pytest.approx(0.01)
    torch.testing.assert_close(soft.teacher, F.softmax(teacher / 2.0, dim=-1))
    assert soft.corruption.tolist()[0] == [0.0] * 10 + [1.0] and soft.tau == 2.0
    hard = make_targets(labels, corruption, teacher, distill="hard", smoothing=0.0)
    assert hard.teacher.argmax(-1).tolist() == [0, 9] and hard.teacher.sum().item() == 2.0
    assert torch.equal(hard.label, F.one_hot(labels, 10).float()) and hard.tau is None
    plain = make_targets(labels, distill="none")
    assert plain.teacher is None and plain.corruption is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"distill": "soft"}, "needs the cached teacher logits"),
        ({"distill": "hard", "teacher_logits": torch.zeros(2, 7)}, "have shape"),
        ({"distill": "kd"}, "not one of none, soft, hard"),
    ],
)
def test_make_targets_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(CdeitError, match=match):
        make_targets(torch.tensor([0, 1]), **kwargs)


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_weight_one_changes_nothing(mode: str) -> None:
    images, targets = batch()
    mixed, out = mix_with(images, targets, mode, 1.0, box=(0, 0, 0, 0))
    assert torch.equal(mixed, images) and out.weight == 1.0 and out.mode == mode
    for name, target in targets.distributions().items():
        assert torch.equal(out.distributions()[name], target), name


def test_no_mixing_returns_the_batch_as_is() -> None:
    images, targets = batch()
    mixed, out = mix_batch(images, targets, mixup_prob=0.0, generator=gen())
    assert mixed is images and out is targets and out.mode == "none" and out.perm is None


@pytest.mark.parametrize("distill", ["soft", "hard"])
def test_mixup_same_pairing_and_weight_for_images_and_every_target(distill: str) -> None:
    images, targets = batch(distill)
    mixed, out = mix_batch(images, targets, mixup_prob=1.0, generator=gen(1))
    w, perm = out.weight, out.perm
    assert out.mode == "mixup" and 0.0 < w < 1.0 and perm.tolist() == list(range(B - 1, -1, -1))
    torch.testing.assert_close(mixed, w * images + (1 - w) * images[perm])
    assert set(out.distributions()) == {"label", "teacher", "corruption"}
    for name, target in targets.distributions().items():
        torch.testing.assert_close(out.distributions()[name], w * target + (1 - w) * target[perm], msg=name)
    # the images carry the same weight: solve mixed = w x + (1 - w) x[perm] for w, pixel by pixel
    diff = images - images[perm]
    keep = diff.abs() > 1e-2
    torch.testing.assert_close((mixed - images[perm])[keep] / diff[keep], torch.full_like(diff[keep], w))


def test_cutmix_weight_is_the_share_of_own_pixels() -> None:
    images, targets = batch("hard")
    mixed, out = mix_batch(images, targets, mixup_prob=0.0, cutmix_prob=1.0, generator=gen(2))
    assert out.mode == "cutmix"
    changed = (mixed != images).any(1)  # (B, H, W), the pasted box
    own_share = 1.0 - changed.float().mean((1, 2))
    mid = B // 2  # with the flip pairing, no sample is paired with itself in an even batch
    torch.testing.assert_close(own_share, torch.full((B,), out.weight))
    assert out.weight < 1.0 and changed[:mid].any()
    for name, target in targets.distributions().items():
        expected = out.weight * target + (1 - out.weight) * target[out.perm]
        torch.testing.assert_close(out.distributions()[name], expected, msg=name)


@pytest.mark.parametrize("distill", ["soft", "hard"])
@pytest.mark.parametrize(("mixup_prob", "cutmix_prob"), [(1.0, 0.0), (0.0, 1.0)])
def test_mixed_targets_are_distributions(distill: str, mixup_prob: float, cutmix_prob: float) -> None:
    for seed in range(5):
        images, targets = batch(distill, seed)
        _, out = mix_batch(images, targets, mixup_prob, cutmix_prob=cutmix_prob, generator=gen(seed))
        for name, target in out.distributions().items():
            assert (target >= 0).all(), name
            torch.testing.assert_close(target.sum(-1), torch.ones(B), msg=name)


def test_mixing_probability_and_reproducibility() -> None:
    small = make_targets(torch.tensor([0, 1]))
    g = gen(3)
    modes = [mix_batch(torch.zeros(2, 3, 4, 4), small, mixup_prob=0.3, generator=g)[1].mode for _ in range(1000)]
    assert modes.count("mixup") / len(modes) == pytest.approx(0.3, abs=0.05)
    assert set(modes) == {"mixup", "none"}  # CutMix is off by default
    images, targets = batch()
    a, _ = mix_batch(images, targets, mixup_prob=1.0, generator=gen(4))
    b, _ = mix_batch(images, targets, mixup_prob=1.0, generator=gen(4))
    assert torch.equal(a, b)
    c, _ = mix_batch(images, targets, mixup_prob=1.0, generator=gen(5))
    assert not torch.equal(a, c)


def test_beta_weights() -> None:
    g = gen(5)
    lams = torch.tensor([sample_beta(0.8, g) for _ in range(4000)])
    assert lams.min() >= 0 and lams.max() <= 1
    assert lams.mean().item() == pytest.approx(0.5, abs=0.02)
    assert lams.var().item() == pytest.approx(0.8 * 0.8 / (1.6**2 * 2.6), abs=0.01)  # Beta(0.8, 0.8) variance


def test_bad_probabilities() -> None:
    images, targets = batch()
    with pytest.raises(CdeitError, match="sum to at most 1"):
        mix_batch(images, targets, mixup_prob=0.8, cutmix_prob=0.3)


def test_erasing_changes_boxes_only_and_leaves_targets_alone() -> None:
    g = gen(6)
    images, targets = torch.randn(512, 3, 32, 32, generator=g), batch()[1]
    erase = RandomErasing(probability=0.25)
    original = images.clone()
    erased, out = erase(images, targets, generator=gen(7))
    assert out is targets and torch.equal(images, original)  # targets and input untouched
    mask = erase.mask(images, gen(7))  # the same draws as the call above
    assert torch.equal(erased[~mask.expand_as(images)], images[~mask.expand_as(images)])
    assert (erased != images)[mask.expand_as(images)].all()  # per-pixel noise replaces the box
    hit = mask.flatten(1).any(1).float()
    assert hit.mean().item() == pytest.approx(0.25, abs=0.06)
    rows, cols = mask.any(3).squeeze(1), mask.any(2).squeeze(1)  # a box: its area is rows x cols
    assert torch.equal(mask.flatten(1).sum(1), rows.sum(1) * cols.sum(1))
    assert torch.equal(erase(images, targets, generator=gen(7))[0], erased)


def test_erasing_matches_timm_box_sizes() -> None:
    """The batch backend draws boxes like timm's loop: same share of images and of erased area."""
    images, targets = torch.zeros(3000, 3, 32, 32), batch()[1]
    mask = RandomErasing(0.5).mask(images, gen(8)).squeeze(1)  # (N, H, W)
    ours = mask.flatten(1).float().mean(1)
    rows, cols = mask.any(2)[ours > 0], mask.any(1)[ours > 0]  # (n, H), (n, W) of the erased images
    assert rows.sum(1).max() < 32 and cols.sum(1).max() < 32  # timm keeps the first box that fits inside
    for edges in (rows, cols):  # every position is reachable: as many boxes touch the last row as the first
        assert edges[:, -1].sum().item() == pytest.approx(edges[:, 0].sum().item(), rel=0.25)
    random.seed(0)
    erased, out = RandomErasing(0.5, backend="timm")(images.clone(), targets)
    assert out is targets
    theirs = (erased != 0).flatten(1).float().mean(1)  # fraction of each image erased by timm
    assert (ours > 0).float().mean().item() == pytest.approx((theirs > 0).float().mean().item(), abs=0.04)
    assert ours[ours > 0].mean().item() == pytest.approx(theirs[theirs > 0].mean().item(), abs=0.015)
    assert ours[ours > 0].min() >= 0.015 and ours.max() <= 1 / 3 + 0.02  # 2-33 %, up to rounding


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augmentation_stays_on_the_device() -> None:
    dev = torch.device("cuda")
    g = torch.Generator(dev).manual_seed(0)
    images = torch.randn(64, 3, 32, 32, device=dev, generator=g)
    labels, corruption = torch.randint(0, 10, (64,), device=dev), torch.randint(0, 11, (64,), device=dev)
    targets = make_targets(labels, corruption, torch.randn(64, 10, device=dev), distill="soft")
    mixed, out = mix_batch(images, targets, mixup_prob=1.0, generator=gen(0))  # host-side draws, CPU generator
    erase = RandomErasing(probability=0.5)
    erased, out2 = erase(mixed, out, generator=torch.Generator(dev).manual_seed(1))
    again, _ = erase(mixed, out, generator=torch.Generator(dev).manual_seed(1))
    assert out2 is out and torch.equal(erased, again) and not torch.equal(erased, mixed)
    assert {t.device.type for t in (erased, out.perm, *out.distributions().values())} == {"cuda"}
