"""--model-ema (timm ModelEmaV3: validated, checkpointed, saved) and --aa (timm's RandAugment on the uint8 batch)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cdeit.common.errors import CdeitError
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.ema import StudentEma
from cdeit.train.core.models import build_student, load_safetensors
from cdeit.train.core.randaugment import BatchRandAugment
from cdeit.train.core.trainer import Trainer, train

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:  # noqa: ANN003
    base = dict(student="vit", distill="none", data=str(data), out=str(out), epochs=2, batch_size=32,
                lr_per_512=2e-3, warmup_epochs=0.5, eval_batch_size=64, model_kwargs=TINY, workers=1)  # fmt: skip
    return TrainConfig(**(base | kw))


def test_ema_follows_timm_decay() -> None:
    """The first update copies the weights; later ones move by (1 - decay) towards them."""
    model = build_student("vit", None, num_classes=10, **TINY)
    ema = StudentEma(model, decay=0.5)
    with torch.no_grad():
        model.head.weight.fill_(1.0)
    ema.update(1)
    assert torch.equal(ema.module.head.weight, model.head.weight)
    with torch.no_grad():
        model.head.weight.fill_(3.0)
    ema.update(2)
    assert torch.allclose(ema.module.head.weight, torch.full_like(model.head.weight, 2.0))
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_is_validated_saved_and_resumed_exactly(tiny_dataset: Path, tmp_path: Path) -> None:
    """ema_val_* beside val_* in metrics.jsonl; RUN/model_ema.safetensors loads like model.safetensors; a run
    stopped after its first epoch and resumed ends with the same EMA weights as one that ran through."""
    cfg = _cfg(tiny_dataset, tmp_path / "ref", model_ema=True, model_ema_decay=0.9, batch_size=64)
    summary = train(cfg)
    records = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert {"ema_val_acc", "ema_val_loss", "ema_val_ece", "val_acc"} <= records[-1].keys()
    assert summary["ema_val_acc"] == records[-1]["ema_val_acc"]
    ref = load_safetensors(tmp_path / "ref" / "model_ema.safetensors")
    assert not torch.equal(ref.head.weight, load_safetensors(tmp_path / "ref" / "model.safetensors").head.weight)

    stopped = Trainer(_cfg(tiny_dataset, tmp_path / "cut", model_ema=True, model_ema_decay=0.9, batch_size=64))
    save = stopped.save_checkpoint

    def save_then_stop() -> None:
        save()
        raise KeyboardInterrupt  # a kill right after the first epoch's checkpoint

    stopped.save_checkpoint = save_then_stop
    with pytest.raises(KeyboardInterrupt):
        stopped.run()
    train(_cfg(tiny_dataset, tmp_path / "cut", model_ema=True, model_ema_decay=0.9, batch_size=64), resume=True)
    resumed = load_safetensors(tmp_path / "cut" / "model_ema.safetensors")
    a, b = ref.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_randaugment_is_timms_drawn_from_its_own_generator() -> None:
    """Same generator state, same images; the global random and numpy states are left as they were."""
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    aug = BatchRandAugment("rand-m9-mstd0.5", (0.5, 0.5, 0.5), 32, seed=3)
    state = aug.get_state()
    before = random.getstate(), np.random.get_state()[1].copy()
    first = aug(images)
    assert random.getstate() == before[0] and np.array_equal(np.random.get_state()[1], before[1])
    assert first.dtype == torch.uint8 and first.shape == images.shape and not torch.equal(first, images)
    aug.set_state(state)
    assert torch.equal(aug(images), first)


def test_randaugment_run_and_its_refusal_for_fixed_views(tiny_dataset: Path, views_cache: Path, tmp_path: Path) -> None:
    """--aa trains and resumes its generator from the checkpoint; a K-view cache refuses it, naming --aa."""
    trainer = Trainer(_cfg(tiny_dataset, tmp_path / "run", epochs=1, aa="rand-m9-mstd0.5", grad_accum_steps=2))
    summary = trainer.run()
    assert summary["steps"] == (220 // 16) // 2  # micro-batches of 16, two per optimizer step
    assert "aa" in torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["rng"]
    cfg = _cfg(tiny_dataset, tmp_path / "views", student="deit", distill="soft", teacher_cache=str(views_cache),
               cutmix_prob=0.3, aa="rand-m9-mstd0.5")  # fmt: skip
    with pytest.raises(CdeitError, match="--aa"):
        Trainer(cfg)
