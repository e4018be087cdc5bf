"""`cdeit train` with a K-view cache: the exact images the teacher saw, their logits, mixed labels, refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cdeit.common.cache import AUGMENTED_DIR, read_arrays, read_attrs, write_manifest, write_shard
from cdeit.common.errors import CdeitError
from cdeit.common.views import ViewParams, draw_views, image_hash, params_rows, render_views
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.trainer import Trainer, train

TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def _cfg(data: Path, cache: Path, out: Path, **kw) -> TrainConfig:  # noqa: ANN003
    base = dict(student="deit", distill="soft", data=str(data), teacher_cache=str(cache), out=str(out), epochs=2,
                batch_size=32, warmup_epochs=0.5, eval_batch_size=64, model_kwargs=TINY, workers=1,
                cutmix_prob=0.3)  # fmt: skip
    return TrainConfig(**(base | kw))


def _stored(cache: Path) -> dict[str, np.ndarray]:
    """view_hash and view_logits of every train sample, straight from the augmented shards."""
    shards = sorted((cache / AUGMENTED_DIR).glob("train-*.h5"))
    return {k: np.concatenate([read_arrays(p, (k,))[k] for p in shards]) for k in ("view_hash", "view_logits")}


def test_train_renders_the_bytes_the_teacher_saw(views_cache: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    trainer = Trainer(_cfg(tiny_dataset, views_cache, tmp_path / "run"))
    replay = trainer.teacher
    stored = _stored(views_cache)
    for epoch in (0, 1):
        replay.start_epoch(epoch)
        batch = dict(zip(trainer.batch_fields, next(iter(trainer.train_loader)), strict=True))
        images, targets = replay.replay(batch, trainer.augment)
        index = batch["index"]
        view = replay.view_of(index)
        # the precompute's path: parameters drawn afresh from (seed, i, k), rendered by the same function
        drawn = draw_views(0, np.arange(220), 2, 220, replay.views.augmentation)
        flat = params_rows(drawn, index.numpy(), view.numpy())
        fresh = ViewParams(**{k: torch.from_numpy(np.asarray(v)) for k, v in vars(flat).items()})
        assert torch.equal(images, render_views(replay.images, index, view, fresh, 0))
        assert np.array_equal(image_hash(images).numpy(), stored["view_hash"][index.numpy(), view.numpy()])
        logits = torch.from_numpy(stored["view_logits"][index.numpy(), view.numpy()])
        t = trainer.augment.temperature  # the cache's calibration (--teacher-temperature auto) applies to views too
        assert torch.allclose(targets.teacher, F.softmax(logits / (t * 3.0), -1))  # the view's own logits, unmixed
        w = fresh.weight[:, None]
        label = F.one_hot(batch["label"], 10) * 0.9 + 0.01
        partner = F.one_hot(replay.labels[fresh.partner], 10) * 0.9 + 0.01
        assert torch.allclose(targets.label, w * label + (1 - w) * partner)
    every = torch.arange(220)
    replay.start_epoch(0)
    first = replay.view_of(every)
    replay.start_epoch(1)
    assert (replay.view_of(every) != first).all()  # K = 2: each sample sees its other view in the next epoch


def test_a_run_replays_views_and_says_when_they_repeat(
    views_cache: Path, tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    summary = train(_cfg(tiny_dataset, views_cache, tmp_path / "run", epochs=3, distill="hard"))
    printed = " ".join(capsys.readouterr().err.split())
    assert "2 augmented views per train sample replayed exactly" in printed
    assert "3 epochs exceed the cache's 2 views" in printed
    assert summary["teacher_view"] == "augmented" and summary["epochs"] == 3 and np.isfinite(summary["val_loss"])


def test_refuses_other_settings_and_catches_changed_views(
    views_cache: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    with pytest.raises(CdeitError, match=r"other augmentation settings than this run's \(mixup_prob 0.2 vs 0.3"):
        Trainer(_cfg(tiny_dataset, views_cache, tmp_path / "a", mixup_prob=0.2))
    with pytest.raises(CdeitError, match=r"cutmix_prob 0 vs 0.3"):
        Trainer(_cfg(tiny_dataset, views_cache, tmp_path / "b", cutmix_prob=0.0))
    with pytest.raises(CdeitError, match="--align needs feature targets"):
        Trainer(_cfg(tiny_dataset, views_cache, tmp_path / "c", align={"embedding": 1.0}))
    cache = Path(shutil.copytree(views_cache, tmp_path / "cache"))
    for shard in (cache / AUGMENTED_DIR).glob("train-*.h5"):
        arrays, attrs = read_arrays(shard), read_attrs(shard)
        arrays["view_hash"] += 1  # every stored checksum wrong, the file checksums rewritten to match
        write_shard(shard, arrays, attrs)
    write_manifest(cache)
    with pytest.raises(CdeitError, match="renders differently from the image the teacher saw"):
        train(_cfg(tiny_dataset, cache, tmp_path / "d", epochs=1))
