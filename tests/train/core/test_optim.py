"""--opt through timm's create_optimizer_v2 (AdamW unchanged), --lr against --lr-per-512, --grad-accum-steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.common.errors import CdeitError
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.models import build_student
from cdeit.train.core.optim import build_optimizer, param_groups

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}
CPU = torch.device("cpu")


def _cfg(**kw) -> TrainConfig:  # noqa: ANN003
    return TrainConfig(**({"data": "d", "out": "o", "student": "vit", "distill": "none"} | kw))


def _student(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_student("vit", None, drop_path_rate=0.0, drop_rate=0.0, num_classes=10, **TINY)


def _steps(model: torch.nn.Module, opt: torch.optim.Optimizer, n: int = 3) -> None:
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for _ in range(n):
        opt.zero_grad()
        model(x).square().mean().backward()  # (B, 10) logits
        opt.step()


def test_default_adamw_is_the_optimizer_of_before(one_thread: None) -> None:
    """timm's adamw over the same groups steps bit-identically to torch.optim.AdamW(groups, lr) (the old code)."""
    cfg = _cfg().validate()
    a, b = _student(), _student()
    ours = build_optimizer(param_groups(a, cfg.weight_decay), cfg, CPU)
    before = torch.optim.AdamW(param_groups(b, cfg.weight_decay), lr=cfg.peak_lr)
    assert type(ours) is torch.optim.AdamW
    assert [g["weight_decay"] for g in ours.param_groups] == [cfg.weight_decay, 0.0]
    # every group names its own weight decay, so only the unused default differs (timm passes --weight-decay)
    assert {k: v for k, v in ours.defaults.items() if k != "weight_decay"} == {
        k: v for k, v in before.defaults.items() if k != "weight_decay"
    }
    _steps(a, ours), _steps(b, before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_sgd_takes_momentum_and_lr() -> None:
    cfg = _cfg(opt="sgd", momentum=0.8, lr=0.01).validate()
    opt = build_optimizer(param_groups(_student(), cfg.weight_decay), cfg, CPU)
    assert type(opt) is torch.optim.SGD
    assert opt.defaults["momentum"] == 0.8 and opt.defaults["nesterov"] and opt.param_groups[0]["lr"] == 0.01
    assert cfg.peak_lr == 0.01 and _cfg(batch_size=1024).peak_lr == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("kw", "option"),
    [
        ({"opt": "adamx_not_here"}, "--opt"),
        ({"momentum": 1.5}, "--momentum"),
        ({"lr": -1.0}, "--lr"),
        ({"lr": 1e-3, "lr_per_512": 1e-3}, "--lr-per-512"),
        ({"model_ema_decay": 1.0}, "--model-ema-decay"),
        ({"grad_accum_steps": 0}, "--grad-accum-steps"),
        ({"grad_accum_steps": 3, "batch_size": 32}, "--grad-accum-steps"),
        ({"aa": "rand-q9"}, "--aa"),
        ({"aa": "original"}, "--aa"),
    ],
)
def test_bad_values_are_one_sentence_naming_the_option(kw: dict, option: str) -> None:
    with pytest.raises(CdeitError, match=option):
        _cfg(**kw).validate()


def test_cli_refuses_lr_with_lr_per_512(tmp_path: Path) -> None:
    """Both typed, even with --lr-per-512 at its default: one sentence, exit code 1, nothing written."""
    args = ["train", "--data", "d", "--out", str(tmp_path / "run"), "--lr", "1e-3", "--lr-per-512", "5e-4"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "--lr-per-512" in result.output and not (tmp_path / "run").exists()


def _engine(accum: int) -> tuple[object, torch.nn.Module]:
    """An Engine over a tiny ViT without dropout, drop path, mixing, erasing or smoothing, `accum` micro-batches."""
    from cdeit.train.core.augment import Augment
    from cdeit.train.core.engine import Engine
    from cdeit.train.core.losses import build_loss
    from cdeit.train.core.models import Normalise
    from cdeit.train.core.optim import lr_schedule
    from cdeit.train.core.teachers import NoTeacher

    cfg = _cfg(mixup_prob=0.0, erasing_prob=0.0, label_smoothing=0.0, grad_accum_steps=accum, batch_size=8)
    model = _student()
    model.set_return_heads(True)
    opt = build_optimizer(param_groups(model, cfg.weight_decay), cfg.validate(), CPU)
    aug = Augment(cfg, Normalise.for_model(model, CPU), 10, CPU)
    engine = Engine(model, build_loss("vit", "none", None, tau=3.0, lam=0.5), NoTeacher(), aug, opt,
                    lr_schedule(opt, cfg, 4), ("image", "label", "corruption", "index"), list(model.parameters()),
                    clip_grad=1.0, accum_steps=accum)  # fmt: skip
    return engine, model


def test_two_half_batches_with_accumulation_equal_one_batch(one_thread: None) -> None:
    from cdeit.train.core.engine import State, train_step

    g = torch.Generator().manual_seed(0)
    batch = [torch.randint(0, 256, (8, 3, 32, 32), generator=g, dtype=torch.uint8),
             torch.arange(8) % 10, torch.zeros(8, dtype=torch.int64), torch.arange(8)]  # fmt: skip
    one, model_one = _engine(1)
    two, model_two = _engine(2)
    s1, s2 = State(), State()
    train_step(one, batch, s1)
    train_step(two, [t[:4] for t in batch], s2, micro=0)
    untouched = zip(model_two.parameters(), _student().parameters(), strict=True)
    assert s2.step == 0 and all(torch.equal(p, q) for p, q in untouched)
    train_step(two, [t[4:] for t in batch], s2, micro=1)
    assert s1.step == s2.step == 1 and one.lr == two.lr
    for p, q in zip(model_one.parameters(), model_two.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7)
        assert torch.allclose(p, q, rtol=0, atol=1e-6)
