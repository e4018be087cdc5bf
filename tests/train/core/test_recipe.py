"""The recipe exactly as documented: timm's schedule per step, --lambda honoured or refused, every number checked,
a non-finite loss stopped with the last good checkpoint kept, the precision actually used recorded."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.common.errors import CdeitError
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.losses import build_loss
from cdeit.train.core.mixing import Targets
from cdeit.train.core.trainer import Trainer

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:  # noqa: ANN003
    base = dict(student="vit", distill="none", data=str(data), out=str(out), epochs=2, batch_size=32,
                lr_per_512=2e-3, warmup_epochs=0.5, eval_batch_size=110, model_kwargs=TINY, workers=1)  # fmt: skip
    return TrainConfig(**(base | kw))


def _timm_schedule(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The per-step lr DeiT/timm's create_scheduler_v2 gives for these settings (step_on_epochs=False)."""
    from timm.scheduler import create_scheduler_v2

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.peak_lr)
    sched, _ = create_scheduler_v2(opt, sched="cosine", num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
                                   warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr, step_on_epochs=False,
                                   updates_per_epoch=steps_per_epoch)  # fmt: skip
    lrs = []
    for step in range(cfg.epochs * steps_per_epoch):
        lrs.append(opt.param_groups[0]["lr"])  # the lr optimizer step `step` uses
        sched.step_update(step + 1)
    return lrs


def _scheduled_lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The lr each optimizer step uses under the Trainer's `lr_schedule`, on a one-parameter optimizer."""
    from cdeit.train.core.optim import lr_schedule

    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.peak_lr)
    sched = lr_schedule(opt, cfg, steps_per_epoch)
    used = []
    for step in range(cfg.epochs * steps_per_epoch):
        used.append(opt.param_groups[0]["lr"])
        sched.step_update(step + 1)  # as engine.train_step does after each optimizer step
    return used


def test_lr_of_every_step_is_timms_cosine_and_ends_at_min_lr(tmp_path: Path) -> None:
    """The tiny run's schedule (3 epochs of 27 steps); test_trainer checks that a run's steps use these lrs."""
    cfg = _cfg(tmp_path, tmp_path / "run", epochs=3, batch_size=8, lr_per_512=1e-2, warmup_epochs=0.5)
    n = 220 // 8
    used = _scheduled_lrs(cfg, n)
    assert used == pytest.approx(_timm_schedule(cfg, n), rel=1e-12, abs=0)
    total, warmup = 3 * n, 0.5 * n  # the curve of docs/training.md, written out
    ramp = [cfg.warmup_lr + (cfg.peak_lr - cfg.warmup_lr) * t / warmup for t in range(total)]
    cosine = [cfg.min_lr + (cfg.peak_lr - cfg.min_lr) / 2 * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    curve = [ramp[t] if t < warmup else cosine[t] for t in range(total)]
    assert used == pytest.approx(curve, rel=1e-9)
    assert used[0] == pytest.approx(cfg.warmup_lr)  # warmup starts at --warmup-lr, inside the total
    assert used[-1] == pytest.approx(cfg.min_lr, rel=0.01)  # the last optimizer step is at --min-lr
    assert used[-1] < used[-2] < used[-3]  # still decaying: per step, not per epoch


def test_table1_schedule_at_full_scale_ends_at_min_lr() -> None:
    """Table 1 on the 495k-image train split: 483 steps of batch 1024 per epoch, 15 epochs, 3 of warmup."""
    cfg = TrainConfig(data="d", out="o")
    n = 495_000 // cfg.batch_size
    used = _scheduled_lrs(cfg, n)
    assert used == pytest.approx(_timm_schedule(cfg, n), rel=1e-12, abs=0)
    assert used[-1] == pytest.approx(cfg.min_lr, rel=0.01)  # was 0.105 x lr with the warmup as a prefix
    w = 3 * n  # the warmup ramps to the lr, then the cosine (already at t = 3/15 of it) takes over, as in timm
    assert used[w - 1] == pytest.approx(cfg.peak_lr, rel=1e-3) and max(used) == used[w - 1]
    assert used[w] == pytest.approx(cfg.min_lr + (cfg.peak_lr - cfg.min_lr) * (1 + math.cos(math.pi * 3 / 15)) / 2)


def _targets(batch: int = 6, classes: int = 10) -> tuple[dict[str, torch.Tensor], Targets]:
    g = torch.Generator().manual_seed(0)
    label = torch.nn.functional.one_hot(torch.randint(0, classes, (batch,), generator=g), classes).float()
    teacher = torch.nn.functional.one_hot(torch.randint(0, classes, (batch,), generator=g), classes).float()
    outputs = {"cls": torch.randn(batch, classes, generator=g), "dist": torch.randn(batch, classes, generator=g)}
    return outputs, Targets(label=label, teacher=teacher, distill="hard", tau=3.0)


@pytest.mark.parametrize("lam", [0.5, 0.2, 0.9])
def test_lambda_weighs_hard_distillation_as_deit_alpha(lam: float) -> None:
    outputs, targets = _targets()
    parts = build_loss("deit", "hard", lam=lam)(outputs, targets)
    assert parts["total"] == pytest.approx(float((1 - lam) * parts["cls_ce"] + lam * parts["dist_ce"]))
    if lam == 0.5:  # Eq. 5
        assert parts["total"] == pytest.approx(float((parts["cls_ce"] + parts["dist_ce"]) / 2))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"student": "cdeit", "distill": "hard", "lam": 0.3}, "does not enter CdeiT's Eq. 6"),
        ({"student": "cdeit", "distill": "soft", "head_strategy": "none", "lam": 0.3}, "CdeiT's strategy 1"),
        ({"distill": "none", "lam": 0.3}, "--distill none has none"),
    ],
)
def test_lambda_where_it_does_not_enter_is_refused(tmp_path: Path, kw: dict, message: str) -> None:
    base = dict(data="d", out="o", teacher_cache="c") | kw
    with pytest.raises(CdeitError, match=message):
        TrainConfig(**base).validate()
    TrainConfig(**(base | {"lam": 0.5})).validate()  # the paper's value is accepted (it is the default)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"lr_per_512": 0.0}, "--lr-per-512"),  # each refusal names its option (and a model kwarg its key)
        ({"lr_per_512": -1e-3}, "--lr-per-512"),
        ({"lr_per_512": float("nan")}, "--lr-per-512"),
        ({"weight_decay": -0.1}, "--weight-decay"),
        ({"warmup_epochs": -1.0}, "--warmup-epochs"),
        ({"min_lr": -1.0}, "--min-lr"),
        ({"clip_grad": 0.0}, "--clip-grad"),
        ({"seed": -1}, "--seed"),
        ({"batch_size": 0}, "--batch-size"),
        ({"epochs": 0}, "--epochs"),
        ({"tau": 0.0}, "--tau"),
        ({"workers": 0}, "--workers"),
        ({"mixup_prob": 0.3, "mixup_alpha": 0.0}, "--mixup-alpha"),
        ({"cutmix_prob": 0.2, "cutmix_alpha": -1.0}, "--cutmix-alpha"),
        ({"model_kwargs": {"depht": 2}}, "--model-kwargs.*depht"),
        ({"model_kwargs": {"drop_path_rate": 0.5}}, "--model-kwargs.*drop_path_rate"),
        ({"model_kwargs": {"embed_dim": 50, "num_heads": 3}}, "--model-kwargs"),
        ({"model_kwargs": {"num_heads": 5}}, "--model-kwargs"),
    ],
)
def test_every_number_is_checked_before_any_work(tmp_path: Path, kw: dict, message: str) -> None:
    out = tmp_path / "run"
    with pytest.raises(CdeitError, match=message):
        Trainer(_cfg(tmp_path / "no-data", out, **kw))  # the dataset does not exist: nothing is read before this
    assert not out.exists()


def test_mixup_alpha_zero_is_fine_with_mixup_off() -> None:
    TrainConfig(data="d", out="o", distill="none", student="vit", mixup_prob=0.0, mixup_alpha=0.0).validate()


def test_cli_bad_number_is_one_sentence(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--student", "vit", "--distill", "none", "--data", str(tmp_path),
                                      "--out", str(tmp_path / "r"), "--tau", "-1"])  # fmt: skip
    assert result.exit_code == 2 and "--tau must be a positive number, not -1.0" in result.output
    assert "Traceback" not in result.output


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tiny_dataset: Path, tmp_path: Path, one_thread) -> None:
    out = tmp_path / "run"
    trainer = Trainer(_cfg(tiny_dataset, out, epochs=3))

    def poison(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        # from the 4th step of epoch 2 on, the head's output is NaN (as an overflow would make it)
        late = trainer.state.epoch >= 1 and trainer.state.step >= trainer.steps_per_epoch + 3
        return output * float("nan") if module.training and late else output

    trainer.raw_model.head.register_forward_hook(poison)
    with pytest.raises(CdeitError, match=r"became NaN or infinite at epoch 2, step 4 of 6 \(optimizer step 10\)"):
        trainer.run()
    payload = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert payload["state"]["epoch"] == 1  # the last good checkpoint stays
    assert all(torch.isfinite(v).all() for v in payload["model"].values())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    for path in [*out.glob("*.json"), out / "metrics.jsonl"]:
        text = path.read_text()
        assert "NaN" not in text and "Infinity" not in text, path
        for line in text.splitlines() if path.suffix == ".jsonl" else [text]:
            json.loads(line)
