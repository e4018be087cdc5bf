"""Objectives: each loss against a written-out computation of its equation, errors, and a few optimisation steps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cdeit.common.errors import CdeitError
from cdeit.train.core.losses import build_loss, soft_target_ce, tempered_kl
from cdeit.train.core.mixing import Targets, make_targets, mix_with
from cdeit.train.core.models import build_student

pytestmark = pytest.mark.usefixtures("one_thread")

B, C, K, EPS = 4, 10, 11, 0.1


# --- the equations written out in plain Python, one sample at a time --------------------------------------------


def log_softmax(z: list[float]) -> list[float]:
    top = max(z)
    lse = top + math.log(sum(math.exp(v - top) for v in z))
    return [v - lse for v in z]


def ce(logits: torch.Tensor, index: torch.Tensor, eps: float = 0.0) -> float:
    """Mean over the batch of -((1 - eps) log p_y + eps / n sum_k log p_k)."""
    total = 0.0
    for z, y in zip(logits.tolist(), index.tolist(), strict=True):
        lp = log_softmax(z)
        total += -((1 - eps) * lp[y] + eps / len(z) * sum(lp))
    return total / len(logits)


def kl(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> float:
    """Mean over the batch of sum_k p_k (log p_k - log q_k), p = softmax(z_t / tau), q = softmax(z_s / tau)."""
    total = 0.0
    for zs, zt in zip(student.tolist(), teacher.tolist(), strict=True):
        log_p, log_q = log_softmax([v / tau for v in zt]), log_softmax([v / tau for v in zs])
        total += sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q, strict=True))
    return total / len(student)


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture
def data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "cls": 2 * torch.randn(B, C, generator=g),
        "dist": 2 * torch.randn(B, C, generator=g),
        "corr": 2 * torch.randn(B, K, generator=g),
        "corr_to_cls": torch.randn(B, C, generator=g),
        "y": torch.randint(0, C, (B,), generator=g),
        "c": torch.randint(0, K, (B,), generator=g),
        "t": 3 * torch.randn(B, C, generator=g),
    }


def targets(d: dict[str, torch.Tensor], distill: str, tau: float = 3.0) -> Targets:
    return make_targets(d["y"], d["c"], d["t"], distill=distill, tau=tau, smoothing=EPS)


def outputs(d: dict[str, torch.Tensor], *keys: str) -> dict[str, torch.Tensor]:
    return {k: d[k] for k in keys}


def close(parts: dict[str, torch.Tensor], expected: float) -> None:
    assert parts["total"].item() == pytest.approx(expected, rel=1e-5)


# --- equations ---------------------------------------------------------------------------------------------------


def test_soft_target_ce_equals_torch_label_smoothing(data: dict) -> None:
    t = targets(data, "none")
    expected = F.cross_entropy(data["cls"], data["y"], label_smoothing=EPS)
    torch.testing.assert_close(soft_target_ce(data["cls"], t.label), expected)
    assert soft_target_ce(data["cls"], t.label).item() == pytest.approx(ce(data["cls"], data["y"], EPS), rel=1e-6)


def test_none_vit(data: dict) -> None:
    parts = build_loss("vit")(outputs(data, "cls"), targets(data, "none"))
    assert set(parts) == {"cls_ce", "total"}
    close(parts, ce(data["cls"], data["y"], EPS))


def test_none_deit_and_cdeit_learn_labels_on_every_class_head(data: dict) -> None:
    y, c = data["y"], data["c"]
    parts = build_loss("deit")(outputs(data, "cls", "dist"), targets(data, "none"))
    close(parts, (ce(data["cls"], y, EPS) + ce(data["dist"], y, EPS)) / 2)
    out = outputs(data, "cls", "dist", "corr", "corr_to_cls")
    parts = build_loss("cdeit", head_strategy="none")(out, targets(data, "none"))
    close(parts, (ce(data["cls"], y, EPS) + ce(data["dist"], y, EPS) + ce(data["corr"], c)) / 3)
    parts = build_loss("cdeit", head_strategy="mlp")(out, targets(data, "none"))
    class_term = ce(data["cls"] + data["corr_to_cls"], y, EPS)
    close(parts, (class_term + ce(data["dist"], y, EPS) + ce(data["corr"], c)) / 3)


@pytest.mark.parametrize(("tau", "lam"), [(3.0, 0.5), (2.0, 0.3)])
def test_soft_deit_eq4(data: dict, tau: float, lam: float) -> None:
    parts = build_loss("deit", "soft", tau=tau, lam=lam)(outputs(data, "cls", "dist"), targets(data, "soft", tau))
    assert set(parts) == {"cls_ce", "dist_kl", "total"}
    assert parts["dist_kl"].item() == pytest.approx(kl(data["dist"], data["t"], tau), rel=1e-5)
    close(parts, (1 - lam) * ce(data["cls"], data["y"], EPS) + lam * tau**2 * kl(data["dist"], data["t"], tau))


def test_soft_scales_with_tau_squared(data: dict) -> None:
    """With lam = 1 the total is tau^2 times the per-sample KL; DeiT's code divides that by the class count."""
    tau = 4.0
    parts = build_loss("deit", "soft", tau=tau, lam=1.0)(outputs(data, "cls", "dist"), targets(data, "soft", tau))
    close(parts, tau**2 * kl(data["dist"], data["t"], tau))
    log_q, log_p = F.log_softmax(data["dist"] / tau, 1), F.log_softmax(data["t"] / tau, 1)
    deit = F.kl_div(log_q, log_p, reduction="sum", log_target=True) * tau**2 / data["dist"].numel()
    assert parts["total"].item() == pytest.approx(deit.item() * C, rel=1e-5)


def test_hard_deit_eq5(data: dict) -> None:
    parts = build_loss("deit", "hard")(outputs(data, "cls", "dist"), targets(data, "hard"))
    assert set(parts) == {"cls_ce", "dist_ce", "total"}
    teacher_label = data["t"].argmax(1)
    close(parts, ce(data["cls"], data["y"], EPS) / 2 + ce(data["dist"], teacher_label) / 2)


@pytest.mark.parametrize("strategy", ["linear", "mlp"])
def test_hard_cdeit_eq6(data: dict, strategy: str) -> None:
    out = outputs(data, "cls", "dist", "corr", "corr_to_cls")
    parts = build_loss("cdeit", "hard", strategy)(out, targets(data, "hard"))
    assert set(parts) == {"cls_ce", "dist_ce", "corr_ce", "total"}
    class_term = ce(data["cls"] + data["corr_to_cls"], data["y"], EPS)
    close(parts, (class_term + ce(data["dist"], data["t"].argmax(1)) + ce(data["corr"], data["c"])) / 3)


def test_hard_cdeit_strategy1_averages_the_tokens(data: dict) -> None:
    parts = build_loss("cdeit", "hard", "none")(outputs(data, "cls", "dist", "corr"), targets(data, "hard"))
    close(
        parts,
        (ce(data["cls"], data["y"], EPS) + ce(data["dist"], data["t"].argmax(1)) + ce(data["corr"], data["c"])) / 3,
    )


@pytest.mark.parametrize("strategy", ["linear", "mlp"])
def test_soft_cdeit_eq7(data: dict, strategy: str) -> None:
    tau, lam = 2.5, 0.4
    out = outputs(data, "cls", "dist", "corr", "corr_to_cls")
    parts = build_loss("cdeit", "soft", strategy, tau=tau, lam=lam)(out, targets(data, "soft", tau))
    labelled = (ce(data["cls"] + data["corr_to_cls"], data["y"], EPS) + ce(data["corr"], data["c"])) / 2
    close(parts, (1 - lam) * labelled + lam * tau**2 * kl(data["dist"], data["t"], tau))


def test_soft_cdeit_strategy1_averages_the_tokens(data: dict) -> None:
    parts = build_loss("cdeit", "soft", "none")(outputs(data, "cls", "dist", "corr"), targets(data, "soft"))
    own = [ce(data["cls"], data["y"], EPS), 9.0 * kl(data["dist"], data["t"], 3.0), ce(data["corr"], data["c"])]
    close(parts, sum(own) / 3)


def test_mixed_targets_mix_the_losses(data: dict) -> None:
    """Soft-target CE is linear in the target: a mixed target gives the mixed loss, as timm's SoftTargetCE."""
    w = 0.7
    _, mixed = mix_with(torch.zeros(B, 3, 32, 32), targets(data, "hard"), "mixup", w)
    parts = build_loss("deit", "hard")(outputs(data, "cls", "dist"), mixed)
    y, ty, perm = data["y"], data["t"].argmax(1), mixed.perm
    cls_term = w * ce(data["cls"], y, EPS) + (1 - w) * ce(data["cls"], y[perm], EPS)
    dist_term = w * ce(data["dist"], ty) + (1 - w) * ce(data["dist"], ty[perm])
    close(parts, (cls_term + dist_term) / 2)


def test_tempered_kl_is_zero_at_the_teacher(data: dict) -> None:
    p = F.softmax(data["t"] / 3.0, 1)
    assert tempered_kl(data["t"], p, 3.0).abs().item() < 1e-6
    assert tempered_kl(data["dist"], p, 3.0).item() > 0


# --- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("vit", "soft"), {}, "distillation 'soft' needs a distillation token"),
        (("vit", "hard"), {}, "use student deit or cdeit"),
        (("deit", "none"), {"head_strategy": "linear"}, "only applies to the cdeit student"),
        (("cdeit", "hard"), {"head_strategy": "two"}, "'two' is not one of none, linear, mlp"),
        (("deit", "teacher"), {}, "'teacher' is not one of none, soft, hard"),
        (("convnet", "none"), {}, "'convnet' is not one of vit, deit, cdeit"),
        (("deit", "soft"), {"lam": 1.5}, "0 <= lam <= 1"),
    ],
)
def test_invalid_combinations(args: tuple, kwargs: dict, match: str) -> None:
    with pytest.raises(CdeitError, match=match):
        build_loss(*args, **kwargs)


def test_mismatched_targets_and_outputs(data: dict) -> None:
    out = outputs(data, "cls", "dist")
    with pytest.raises(CdeitError, match="expects soft teacher targets"):
        build_loss("deit", "soft")(out, targets(data, "hard"))
    with pytest.raises(CdeitError, match=r"tau 3.0\) but got soft \(tau 2.0"):
        build_loss("deit", "soft")(out, targets(data, "soft", tau=2.0))
    with pytest.raises(CdeitError, match="needs teacher targets"):
        build_loss("deit", "hard")(out, targets(data, "none"))
    with pytest.raises(CdeitError, match="needs the model output 'corr_to_cls'"):
        build_loss("cdeit", "hard", "linear")(outputs(data, "cls", "dist", "corr"), targets(data, "hard"))
    with pytest.raises(CdeitError, match=r"got one tensor .*set_return_heads"):
        build_loss("deit", "hard")(out["cls"], targets(data, "hard"))  # a model that returns the class logits
    no_corruption = make_targets(data["y"], None, data["t"], distill="hard")
    with pytest.raises(CdeitError, match="needs corruption targets"):
        build_loss("cdeit", "hard", "none")(outputs(data, "cls", "dist", "corr"), no_corruption)


# --- a few optimisation steps of every student x loss --------------------------------------------------------------

COMBINATIONS = [("vit", None, "none")] + [("deit", None, d) for d in ("none", "soft", "hard")]
COMBINATIONS += [("cdeit", s, d) for s in ("none", "linear", "mlp") for d in ("none", "soft", "hard")]


@pytest.mark.parametrize(("student", "strategy", "distill"), COMBINATIONS)
def test_optimisation_lowers_the_loss(student: str, strategy: str | None, distill: str) -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(16, 3, 32, 32, generator=g)
    labels, corruption = torch.randint(0, C, (16,), generator=g), torch.randint(0, K, (16,), generator=g)
    teacher = 3 * torch.randn(16, C, generator=g)
    t = make_targets(labels, corruption, teacher, distill=distill)
    images, t = mix_with(images, t, "mixup", 0.8)  # a fixed mixed batch: every target is a soft distribution
    model = build_student(student, strategy, depth=2, embed_dim=48, num_heads=3, drop_path_rate=0.0)
    model.train().set_return_heads(True)  # the losses take every head
    loss_fn = build_loss(student, distill, strategy)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    losses = []
    for step in range(15):
        parts = loss_fn(model(images), t)
        opt.zero_grad()
        parts["total"].backward()
        if step == 0:  # every token, head and projection learns from the objective
            assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()] == []
        opt.step()
        losses.append(parts["total"].item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.75 * losses[0], losses
