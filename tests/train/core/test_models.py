"""Students: sizes, outputs with and without every head, classifier reset, timm registration, safetensors round
trip, torch.compile, input normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from cdeit.common.errors import CdeitError
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.kinds import check_model_kwargs, resolve_head_strategy
from cdeit.train.core.models import MODEL_NAMES, Normalise, TokenViT, build_student, load_safetensors, save_safetensors

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"depth": 1, "embed_dim": 48, "num_heads": 3}
VARIANTS = [("vit", None), ("deit", None), ("cdeit", "none"), ("cdeit", "linear"), ("cdeit", "mlp")]
KEYS = {
    ("vit", None): {"cls"},
    ("deit", None): {"cls", "dist"},
    ("cdeit", "none"): {"cls", "dist", "corr"},
    ("cdeit", "linear"): {"cls", "dist", "corr", "corr_to_cls"},
    ("cdeit", "mlp"): {"cls", "dist", "corr", "corr_to_cls"},
}


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_full_size_parameter_counts() -> None:
    """About 5.4M each; the extra tokens and heads add exactly what they should."""
    n = {v: build_student(*v).num_parameters() for v in VARIANTS}
    for variant, count in n.items():
        assert 5_300_000 < count < 5_450_000, (variant, count)
    d, cls_head, corr_head = 192, 192 * 10 + 10, 192 * 11 + 11
    token = 2 * d  # the token itself and its position embedding
    assert n["deit", None] - n["vit", None] == token + cls_head
    assert n["cdeit", "none"] - n["deit", None] == token + corr_head
    assert n["cdeit", "linear"] - n["cdeit", "none"] == 11 * 10 + 10
    assert n["cdeit", "mlp"] - n["cdeit", "none"] == (11 * 44 + 44) + (44 * 10 + 10)
    model = build_student("cdeit", "linear")
    assert model.pos_embed.shape == (1, 64 + 3, 192) and len(model.blocks) == 12
    assert model.blocks[0].attn.num_heads == 3 and model.patch_embed.proj.kernel_size == (4, 4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_with_and_without_every_head(variant: tuple[str, str | None], images: torch.Tensor) -> None:
    model = build_student(*variant, **SMALL).train().set_return_heads(True)
    out = model(images)
    assert set(out) == KEYS[variant]
    for key, logits in out.items():
        assert logits.shape == (4, 11 if key == "corr" else 10)
    model.eval()
    heads = model(images)  # the switch, not the mode, decides what forward returns
    assert set(heads) == KEYS[variant]
    for k, v in model.forward_heads(images).items():
        torch.testing.assert_close(v, heads[k])
    class_space = [heads[k] for k in ("cls", "dist", "corr_to_cls") if k in heads]
    expected = sum(class_space) / len(class_space)  # the average of the class-space heads (paper 2.3, 3.3)
    model.set_return_heads(False)
    torch.testing.assert_close(model(images), expected)
    assert model(images).shape == (4, 10)
    model.train()
    assert isinstance(model(images), torch.Tensor)  # class logits in train mode too
    torch.testing.assert_close(model.forward_head(model.forward_features(images)), model(images))


def test_tokens_are_embeddings_the_heads_read(images: torch.Tensor) -> None:
    model = build_student("cdeit", "mlp", **SMALL).eval()
    tokens = model.forward_tokens(images)
    assert {k: v.shape for k, v in tokens.items()} == {k: (4, 48) for k in ("cls", "dist", "corr")}
    heads = model.forward_heads(images)
    torch.testing.assert_close(model.head(tokens["cls"]), heads["cls"])
    torch.testing.assert_close(model.head_dist(tokens["dist"]), heads["dist"])
    torch.testing.assert_close(model.head_corr(tokens["corr"]), heads["corr"])


def test_corruption_token_takes_part_in_attention(images: torch.Tensor) -> None:
    model = build_student("cdeit", "none", **SMALL).eval()
    before = model(images)
    with torch.no_grad():
        model.corr_token.add_(torch.randn_like(model.corr_token))  # not a constant: LayerNorm would cancel it
    assert not torch.allclose(model(images), before)


def test_create_model_with_kwargs() -> None:
    import cdeit.train.core.models  # noqa: F401  (registers the students)

    model = timm.create_model("cdeit_tiny_patch4_32", head_strategy="mlp", depth=2, drop_path_rate=0.0)
    assert isinstance(model, TokenViT) and len(model.blocks) == 2
    assert isinstance(model.corr_to_cls, nn.Sequential) and isinstance(model.corr_to_cls[1], nn.GELU)
    assert isinstance(model.blocks[1].drop_path1, nn.Identity)
    default = timm.create_model("vit_tiny_patch4_32", depth=2)
    assert default.blocks[1].drop_path1.drop_prob == pytest.approx(0.1)  # stochastic depth 0.1 by default
    assert timm.create_model("cdeit_tiny_patch4_32", depth=1).head_strategy == "linear"
    assert set(MODEL_NAMES.values()) <= set(timm.list_models("*patch4_32"))
    assert default.pretrained_cfg["input_size"] == (3, 32, 32)


@pytest.mark.parametrize(("kind", "strategy"), [("vit", "linear"), ("deit", "none"), ("cdeit", "big")])
def test_invalid_head_strategy(kind: str, strategy: str) -> None:
    with pytest.raises(CdeitError, match="head_strategy") as info:
        build_student(kind, strategy, **SMALL)
    assert (kind if kind != "cdeit" else strategy) in str(info.value)


def test_head_strategy_resolved_in_one_place() -> None:
    """cdeit defaults to strategy 2 (linear); the other students have none; the checks name the given `where`."""
    assert resolve_head_strategy("cdeit", None) == "linear" and resolve_head_strategy("cdeit", "mlp") == "mlp"
    assert resolve_head_strategy("vit", None) is None and resolve_head_strategy("deit", None) is None
    assert TrainConfig(student="cdeit").resolved_head_strategy() == "linear"
    assert TrainConfig(student="deit").resolved_head_strategy() is None
    with pytest.raises(CdeitError, match="--head-strategy"):
        resolve_head_strategy("deit", "mlp", "--head-strategy")
    with pytest.raises(CdeitError, match="'resnet'"):
        resolve_head_strategy("resnet", None)


def test_no_pretrained_weights() -> None:
    with pytest.raises(CdeitError, match="vit_tiny_patch4_32"):
        timm.create_model("vit_tiny_patch4_32", pretrained=True)


def test_no_weight_decay_names_tokens_and_pos_embed() -> None:
    model = build_student("cdeit", "linear", **SMALL)
    params = dict(model.named_parameters())
    assert model.no_weight_decay() == {"pos_embed", "cls_token", "dist_token", "corr_token"}
    assert all(name in params for name in model.no_weight_decay())
    assert build_student("vit", **SMALL).no_weight_decay() == {"pos_embed", "cls_token"}


def test_safetensors_round_trip(tmp_path: Path, images: torch.Tensor) -> None:
    model = build_student("cdeit", "mlp", depth=2, embed_dim=48, num_heads=3).eval()
    path = save_safetensors(model, tmp_path / "student.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["student.safetensors"]  # no temporary file left
    loaded = load_safetensors(path)
    assert not loaded.training and loaded.model_config() == model.model_config()
    assert torch.equal(loaded(images), model(images))
    assert model.model_config()["kwargs"]["depth"] == 2


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    for path in (tmp_path / "missing.safetensors", foreign, garbage):  # missing, no cdeit metadata, not safetensors
        with pytest.raises(CdeitError, match=path.name):
            load_safetensors(path)


def test_model_kwargs_are_checked_by_one_table(tmp_path: Path) -> None:
    """The command line, TrainConfig and model files take the same arguments; training refuses what it sets."""
    assert check_model_kwargs(SMALL | {"img_size": 32, "qkv_bias": False}, "--model-kwargs key") == SMALL | {
        "img_size": 32, "qkv_bias": False}  # fmt: skip
    for bad, named in (({"pretrained": True}, "pretrained"), ({"depth": "2"}, "depth"), ({"depth": True}, "depth"),
                       ({"drop_rate": float("nan")}, "drop_rate"), ({"drop_path_rate": 0.2}, "--drop-path"),
                       ({"head_strategy": "mlp"}, "--head-strategy"), ({"num_classes": 5}, "num_classes")):  # fmt: skip
        with pytest.raises(CdeitError, match="--model-kwargs") as info:
            check_model_kwargs(bad, "--model-kwargs key")
        assert named in str(info.value)
    assert check_model_kwargs({"drop_path_rate": 0.2, "num_classes": 5}, "f: model argument", training=False)
    model = build_student("deit", **SMALL, drop_rate=0.1, num_classes=5)
    path = save_safetensors(model, tmp_path / "five.safetensors")  # what training sets itself, a file records
    assert load_safetensors(path).num_classes == 5


def test_student_that_cannot_read_32px_images_is_refused_before_the_run(tmp_path: Path) -> None:
    """img_size 64 builds but cannot read the dataset's 32x32 images: validate (meta device) refuses it."""
    from typer.testing import CliRunner

    from cdeit.common.cli import app

    base = TrainConfig(student="vit", distill="none", data=str(tmp_path / "d"), out=str(tmp_path / "run"))
    for kwargs in ({"img_size": 64}, {"in_chans": 1}, {"num_heads": 5}):
        with pytest.raises(CdeitError, match="--model-kwargs"):
            TrainConfig(**(base.to_json() | {"model_kwargs": SMALL | kwargs})).validate()
    TrainConfig(**(base.to_json() | {"model_kwargs": SMALL | {"img_size": 32}})).validate()
    args = ["train", "--student", "vit", "--distill", "none", "--data", str(tmp_path / "d"), "--out",
            str(tmp_path / "run"), "--model-kwargs", '{"img_size": 64}']  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "img_size" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # nothing written


def test_compiles_to_one_graph(tmp_path: Path, images: torch.Tensor) -> None:
    """Dynamo traces train and eval mode without graph breaks (aot_eager: fast on CPU, includes autograd)."""
    model = build_student("cdeit", "linear", **SMALL).eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(images), model(images))
    model.train().set_return_heads(True)
    out = compiled(images)  # the switch (and train mode) recompiles; it returns the dict of heads
    assert set(out) == KEYS["cdeit", "linear"]
    out["cls"].sum().backward()
    assert model.cls_token.grad is not None
    loaded = load_safetensors(save_safetensors(compiled, tmp_path / "compiled.safetensors"))
    assert set(loaded.state_dict()) == set(model.state_dict())  # saved without the _orig_mod prefix


@pytest.mark.slow
def test_inductor_compile_matches_eager(images: torch.Tensor) -> None:
    """The default backend (C++ code generation on CPU: about 20 s cold on 2 cores)."""
    model = build_student("deit", **SMALL).eval()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(images), model(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs", [{"reg_tokens": 2}, {"class_token": False}, {"global_pool": "avg"}])
def test_token_layout_is_fixed(kwargs: dict) -> None:
    with pytest.raises(CdeitError, match="class_token|reg_tokens|global_pool"):
        build_student("deit", **SMALL, **kwargs)


def test_sizes_live_in_the_registered_functions() -> None:
    """The class keeps timm's neutral defaults (224px, patch 16, 1000 classes); the 32px sizes are the entry points'."""
    bare = TokenViT(kind="deit", embed_dim=32, depth=1, num_heads=2)
    assert bare.patch_embed.grid_size == (14, 14) and bare.num_classes == 1000
    assert bare.pos_embed.shape == (1, 196 + 2, 32)
    student = timm.create_model("deit_tiny_distilled_patch4_32", depth=1)
    assert student.grid_size == (8, 8) and student.embed_dim == 192 and student.blocks[0].attn.num_heads == 3
    assert student.num_classes == 10 and student.model_config()["kwargs"]["patch_size"] == 4


def test_reset_classifier_resets_every_head(images: torch.Tensor) -> None:
    model = build_student("cdeit", "mlp", **SMALL).eval()
    before = {name: p.clone() for name, p in model.named_parameters() if name.startswith(("head", "corr_to_cls"))}
    model.reset_classifier(5)
    assert not model.training and all(not h.training for h in model.get_classifier())
    assert len(model.get_classifier()) == 4  # head, head_dist, head_corr, corr_to_cls
    assert model.head.out_features == model.head_dist.out_features == model.corr_to_cls[-1].out_features == 5
    assert model.head_corr.out_features == 11  # still the image type
    after = dict(model.named_parameters())
    assert all(not torch.equal(after[name], p) for name, p in before.items() if after[name].shape == p.shape)
    assert model(images).shape == (4, 5)
    rebuilt = timm.create_model(model.model_config()["model_name"], **model.model_config()["kwargs"])
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    model.reset_classifier(0)  # timm's convention: the pre-logit embeddings
    assert model(images).shape == (4, 48) and model.corr_to_cls is None
    with pytest.raises(CdeitError, match="global_pool"):
        model.reset_classifier(10, global_pool="avg")


def test_normalise_uses_the_students_statistics() -> None:
    model = build_student("vit", **SMALL)
    normalise = Normalise.for_model(torch.compile(model), "cpu")  # unwraps like save_safetensors
    pixel = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 32, 32)
    mean, std = torch.tensor(model.pretrained_cfg["mean"]), torch.tensor(model.pretrained_cfg["std"])
    expected = (torch.tensor([0, 128, 255]) / 255 - mean) / std
    torch.testing.assert_close(normalise(pixel)[0, :, 0, 0], expected)
    assert model.pretrained_cfg["mean"] == pytest.approx((0.4914, 0.4822, 0.4465))
