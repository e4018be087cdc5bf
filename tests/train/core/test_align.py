"""Alignment with a cached teacher: the student's features, the losses, mixing, the join by source, the CLI, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from cdeit.common.cache import load_teacher_targets, read_arrays, read_cache_manifest
from cdeit.common.cli import app
from cdeit.common.dataset import read_split
from cdeit.common.errors import CdeitError
from cdeit.common.tokens import cls_attention
from cdeit.train.core.align import Alignment, attention_kl, feature_distance
from cdeit.train.core.config import TrainConfig, parse_align
from cdeit.train.core.engine import train_step
from cdeit.train.core.mixing import RandomErasing, make_targets, mix_with
from cdeit.train.core.models import build_student
from cdeit.train.core.trainer import Trainer

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}
ALL = {"embedding": 1.0, "patches": 0.5, "attention": 2.0}


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:  # noqa: ANN003
    base = dict(student="deit", distill="soft", data=str(data), out=str(out), epochs=1, batch_size=32,
                lr_per_512=2e-3, warmup_epochs=0.5, eval_batch_size=64, model_kwargs=TINY, workers=1)  # fmt: skip
    return TrainConfig(**(base | kw))


# ------------------------------------------------------------------------------------------ the student's side
def test_student_features_come_from_the_same_forward() -> None:
    torch.manual_seed(0)
    model = build_student("cdeit", **TINY).eval()
    x = torch.randn(3, 3, 32, 32)
    captured = {}
    hook = model.blocks[-1].norm1.register_forward_hook(lambda m, i, o: captured.setdefault("normed", o))
    plain = model.forward_heads(x)
    hook.remove()
    out = model(x, features=("embedding", "patches", "attention"))
    for k, v in plain.items():
        assert torch.equal(out[k], v), k  # the written-out last block computes what timm's Block computes
    tokens = model.forward_features(x)
    assert torch.equal(out["feat_embedding"], tokens[:, 0]) and out["feat_embedding"].shape == (3, 48)
    assert torch.equal(out["feat_patches"], tokens[:, 3:]) and out["feat_patches"].shape == (3, 64, 48)
    torch.testing.assert_close(out["feat_attention"], cls_attention(model.blocks[-1].attn, captured["normed"], 3))
    assert out["feat_attention"].shape == (3, 64) and torch.allclose(out["feat_attention"].sum(1), torch.ones(3))
    assert set(model(x, features=("patches",))) == {*plain, "feat_patches"}


# ------------------------------------------------------------------------------------------ losses
def test_losses_against_hand_computations() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    cos = [float(a @ b / (a.norm() * b.norm())) for a, b in zip(s, t, strict=True)]
    assert feature_distance(s, t, "cosine").item() == pytest.approx(1 - np.mean(cos), abs=1e-6)
    t_std = (t - t.mean(1, keepdim=True)) / torch.sqrt(t.var(1, unbiased=False, keepdim=True) + 1e-5)
    assert feature_distance(s, t, "mse").item() == pytest.approx(float(((s - t_std) ** 2).mean()), abs=1e-5)
    p = torch.rand(4, 64, generator=g) + 0.01
    q = torch.rand(4, 64, generator=g) + 0.01
    p, q = p / p.sum(1, keepdim=True), q / q.sum(1, keepdim=True)
    want = float((p * (p / q).log()).sum(1).mean())
    assert attention_kl(q, p).item() == pytest.approx(want, rel=1e-5)
    assert attention_kl(p, p).item() == pytest.approx(0.0, abs=1e-6)


def test_alignment_module_weights_parts_and_projections() -> None:
    torch.manual_seed(0)
    align = Alignment(ALL, "cosine", student_dim=48, teacher_dims={"embedding": 64, "patches": 64})
    assert set(align.proj) == {"embedding", "patches"}  # attention needs no projection
    outputs = {"feat_embedding": torch.randn(2, 48), "feat_patches": torch.randn(2, 64, 48),
               "feat_attention": torch.softmax(torch.randn(2, 64), 1)}  # fmt: skip
    teacher = {"embedding": torch.randn(2, 64), "patches": torch.randn(2, 64, 64),
               "attention": torch.softmax(torch.randn(2, 64), 1)}  # fmt: skip
    parts = align(outputs, teacher)
    assert set(parts) == {"align_embedding", "align_patches", "align_attention", "total"}
    emb = feature_distance(align.proj["embedding"](outputs["feat_embedding"]), teacher["embedding"], "cosine")
    assert parts["align_embedding"].item() == pytest.approx(emb.item())
    total = parts["align_embedding"] + 0.5 * parts["align_patches"] + 2.0 * parts["align_attention"]
    assert parts["total"].item() == pytest.approx(total.item())
    decay, no_decay = align.param_groups(0.05)
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) == 2 and decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


# ------------------------------------------------------------------------------------------ mixing
def test_feature_targets_mix_with_the_same_pairing_and_weight() -> None:
    g = torch.Generator().manual_seed(0)
    features = {"embedding": torch.randn(4, 6, generator=g).half(), "attention": torch.rand(4, 64, generator=g)}
    targets = make_targets(torch.tensor([0, 1, 2, 3]), teacher_logits=torch.randn(4, 10, generator=g),
                           distill="soft", features=features)  # fmt: skip
    assert targets.features["embedding"].dtype == torch.float32
    images = torch.randn(4, 3, 32, 32, generator=g)
    _, erased = RandomErasing(1.0)(images, targets, torch.Generator().manual_seed(1))
    assert erased.features is targets.features  # erasing leaves every target alone
    _, mixed = mix_with(images, targets, "mixup", 0.7)
    perm = torch.tensor([3, 2, 1, 0])
    assert torch.equal(mixed.perm, perm) and mixed.weight == 0.7
    for name, v in targets.features.items():
        torch.testing.assert_close(mixed.features[name], 0.7 * v + 0.3 * v[perm])
    torch.testing.assert_close(mixed.teacher, 0.7 * targets.teacher + 0.3 * targets.teacher[perm])
    torch.testing.assert_close(mixed.label, 0.7 * targets.label + 0.3 * targets.label[perm])
    _, same = mix_with(images, targets, "mixup", 1.0)
    assert all(torch.equal(same.features[k], targets.features[k]) for k in features)


# ------------------------------------------------------------------------------------------ the trainer
def test_trainer_joins_a_clean_view_cache_by_source(clean_cache: Path, sourced_dataset: Path, tmp_path: Path) -> None:
    trainer = Trainer(_cfg(sourced_dataset, tmp_path / "run", teacher_cache=str(clean_cache), align=ALL))
    batch = next(iter(trainer.train_loader))
    assert len(batch) == 5  # image, label, corruption, index, source
    _, _, _, index, source = batch
    rows = {}
    for entry in read_cache_manifest(clean_cache)["shards"]:
        a = read_arrays(clean_cache / entry["file"])
        rows |= {int(s): (a["logits"][i], a["attention"][i]) for i, s in enumerate(a["source"])}
    features = trainer.teacher.gather({"index": index, "source": source})  # one gather of every target the run uses
    assert set(features) == {"logits", "embedding", "patches", "attention"}
    assert np.array_equal(features["logits"].numpy(), np.stack([rows[int(s)][0] for s in source]))
    assert np.array_equal(features["attention"].numpy(), np.stack([rows[int(s)][1] for s in source]))
    assert features["patches"].shape == (32, 64, 64) and features["embedding"].shape == (32, 64)
    split = read_split(sourced_dataset / "train.beton", fields=("source",))["source"]
    assert np.array_equal(source.numpy(), split[index.numpy()])  # the loader's source is the sample's
    parts = train_step(trainer.engine, batch, trainer.state)
    assert {"align_embedding", "align_patches", "align_attention", "dist_kl", "cls_ce"} < set(parts)
    total = parts["cls_ce"] * 0.5 + 0.5 * 9 * parts["dist_kl"]
    total += parts["align_embedding"] + 0.5 * parts["align_patches"] + 2.0 * parts["align_attention"]
    assert parts["total"].item() == pytest.approx(total.item(), rel=1e-5)
    n_student = len(list(trainer.raw_model.parameters()))
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == n_student + 4  # + 2 projections


def test_default_run_builds_no_table_or_alignment(same_feature_cache: Path, sourced_dataset: Path,
                                                  tmp_path: Path) -> None:  # fmt: skip
    trainer = Trainer(_cfg(sourced_dataset, tmp_path / "run", teacher_cache=str(same_feature_cache)))
    assert trainer.alignment is None and trainer.teacher.view == "same" and trainer.teacher.fields == ("index",)
    assert set(trainer.teacher.table.tensors) == {"logits"}  # the paper's recipe: one table, though features exist
    assert len(next(iter(trainer.train_loader))) == 4  # the paper's fields: no source
    table = load_teacher_targets(same_feature_cache, sourced_dataset, "train")
    assert torch.equal(trainer.teacher.table.tensors["logits"], table.tensors["logits"])


def test_checkpoint_restores_the_projections(clean_cache: Path, sourced_dataset: Path, tmp_path: Path) -> None:
    cfg = _cfg(sourced_dataset, tmp_path / "run", teacher_cache=str(clean_cache), align={"embedding": 1.0})
    trainer = Trainer(cfg)
    train_step(trainer.engine, next(iter(trainer.train_loader)), trainer.state)
    trainer.save_checkpoint()
    saved = {k: v.clone() for k, v in trainer.alignment.state_dict().items()}
    other = Trainer(cfg, resume=True)
    assert not torch.equal(other.alignment.proj["embedding"].weight, saved["proj.embedding.weight"])
    assert other.load_checkpoint()
    assert all(torch.equal(v, saved[k]) for k, v in other.alignment.state_dict().items())


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"align": {"tokens": 1.0}}, "--align 'tokens' is unknown"),
        ({"align": {"patches": 0.0}}, "--align weight of patches must be a positive number"),
        ({"align": {"patches": 1.0}, "align_metric": "l1"}, "--align-metric 'l1' is unknown"),
        ({"align": {"patches": 1.0}, "teacher_cache": None, "distill": "none"}, "--align needs --teacher-cache"),
        ({"align": {"attention": 1.0}, "model_kwargs": TINY | {"patch_size": 8}}, "this student's 16 patches"),
    ],
)
def test_bad_alignment_settings_are_one_sentence(
    clean_cache: Path, sourced_dataset: Path, tmp_path: Path, kw: dict, message: str
) -> None:
    with pytest.raises(CdeitError, match=message):
        Trainer(_cfg(sourced_dataset, tmp_path / "run", **({"teacher_cache": str(clean_cache)} | kw)))


def test_parse_align() -> None:
    assert parse_align("embedding=1,patches=0.5, attention=2") == {"embedding": 1.0, "patches": 0.5, "attention": 2.0}
    assert parse_align("") == {}
    with pytest.raises(CdeitError, match="has no weight"):
        parse_align("patches")
    with pytest.raises(CdeitError, match="is not a number"):
        parse_align("patches=lots")


# ------------------------------------------------------------------------------------------ end to end
def test_cli_trains_aligned_and_export_drops_the_projections(
    clean_cache: Path, sourced_dataset: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    args = ["train", "--student", "deit", "--distill", "soft", "--data", str(sourced_dataset), "--out", str(run),
            "--teacher-cache", str(clean_cache), "--align", "embedding=1.0,patches=1.0,attention=1.0",
            "--align-metric", "mse", "--mixup-prob", "1.0", "--epochs", "1", "--batch-size", "32",
            "--eval-batch-size", "64", "--model-kwargs", json.dumps(TINY), "--workers", "1"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_align_embedding", "train_align_patches", "train_align_attention", "train_dist_kl"} <= set(record)
    config = json.loads((run / "config.json").read_text())
    assert config["align"] == {"embedding": 1.0, "patches": 1.0, "attention": 1.0} and config["align_metric"] == "mse"
    assert json.loads((run / "summary.json").read_text())["teacher_view"] == "clean"
    checkpoint = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    keys = {f"proj.{n}.{p}" for n in ("embedding", "patches") for p in ("weight", "bias")}
    assert set(checkpoint["alignment"]) == keys
    exported = runner.invoke(app, ["export", str(run), "--to", str(tmp_path / "deit.safetensors")])
    assert exported.exit_code == 0, exported.output
    weights = load_file(str(tmp_path / "deit.safetensors"))
    assert not [k for k in weights if k.startswith(("proj.", "align"))]
    assert weights.keys() == build_student("deit", **TINY).state_dict().keys()
    assert set(load_file(str(run / "model.safetensors"))) == set(weights)


def test_align_with_a_cache_lacking_the_targets_is_refused(tiny_dataset: Path, tmp_path: Path) -> None:
    from tests.common.test_cache import make_cache

    make_cache(tmp_path / "cache", tiny_dataset)  # logits only
    result = CliRunner().invoke(app, ["train", "--student", "vit", "--distill", "none", "--data", str(tiny_dataset),
                                      "--out", str(tmp_path / "run"), "--teacher-cache", str(tmp_path / "cache"),
                                      "--align", "patches=1", "--workers", "1"])  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "holds no patches targets" in " ".join(result.output.split())
    assert "--targets logits,patches" in " ".join(result.output.split())


def test_clip_grad_clips_the_projections_with_the_student(
    clean_cache: Path, sourced_dataset: Path, tmp_path: Path
) -> None:
    """--clip-grad bounds the norm over every parameter the optimizer steps, the alignment's projections included."""
    cfg = _cfg(sourced_dataset, tmp_path / "run", teacher_cache=str(clean_cache), align=ALL, clip_grad=1e-3)
    trainer = Trainer(cfg)
    stepped = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in trainer.engine.params} == {id(p) for p in stepped}
    norms: list[float] = []

    def record(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    trainer.optimizer.register_step_pre_hook(record)
    train_step(trainer.engine, next(iter(trainer.train_loader)), trainer.state)
    assert norms and norms[0] <= 1e-3 * (1 + 1e-4)
