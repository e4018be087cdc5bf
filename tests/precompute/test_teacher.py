"""Building the teacher: checkpoints (.safetensors, .pth with weights_only), refusals, random weights, hashes."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from cdeit.common.errors import CdeitError
from cdeit.common.teacher import build_teacher, own_head


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """A test_vit state dict other than the seed-0 random init."""
    torch.manual_seed(123)
    return timm.create_model("test_vit").state_dict()


def test_safetensors_checkpoint_loads_these_weights(weights: dict[str, torch.Tensor], tmp_path: Path) -> None:
    save_file(weights, str(tmp_path / "w.safetensors"))
    teacher = build_teacher("test_vit", tmp_path / "w.safetensors")
    assert torch.equal(teacher.model.state_dict()["blocks.0.attn.qkv.weight"], weights["blocks.0.attn.qkv.weight"])
    assert teacher.weights_source == "checkpoint w.safetensors" and not teacher.random_weights
    assert teacher.head_loaded and not teacher.model.training
    assert not any(p.requires_grad for p in teacher.model.parameters())
    assert teacher.weights_hash != build_teacher("test_vit", random_weights=True).weights_hash


def test_pth_checkpoint_nested_under_model_loads(weights: dict[str, torch.Tensor], tmp_path: Path) -> None:
    torch.save({"model": weights, "epoch": 3}, tmp_path / "w.pth")
    save_file(weights, str(tmp_path / "w.safetensors"))
    a = build_teacher("test_vit", tmp_path / "w.pth")
    assert a.weights_hash == build_teacher("test_vit", tmp_path / "w.safetensors").weights_hash


def test_pth_holding_a_pickled_object_is_refused(weights: dict[str, torch.Tensor], tmp_path: Path) -> None:
    torch.save({"model": weights, "args": argparse.Namespace(lr=5e-4)}, tmp_path / "deit.pth")  # as DeiT's own
    with pytest.raises(CdeitError, match=r"deit.pth holds pickled Python objects, which cdeit refuses to load"):
        build_teacher("test_vit", tmp_path / "deit.pth")


def test_checkpoint_with_wrong_keys_is_refused_naming_them(weights: dict[str, torch.Tensor], tmp_path: Path) -> None:
    state = dict(weights)
    state["blocks.0.norm_1.weight"] = state.pop("blocks.0.norm1.weight")
    state["blocks.1.mlp.fc1.weight"] = torch.zeros(7, 64)  # (timm's filter would resample a pos_embed instead)
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CdeitError) as err:
        build_teacher("test_vit", tmp_path / "bad.safetensors")
    message = str(err.value)
    assert "bad.safetensors does not fit test_vit" in message
    assert "missing keys blocks.0.norm1.weight" in message and "unexpected keys blocks.0.norm_1.weight" in message
    assert "shape mismatches blocks.1.mlp.fc1.weight (7, 64) vs (192, 64)" in message


def test_long_key_lists_are_truncated(weights: dict[str, torch.Tensor], tmp_path: Path) -> None:
    save_file({f"x{i}": torch.zeros(1) for i in range(40)} | weights, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CdeitError, match=r"unexpected keys x0, x1, x10, x11, x12 \(and 35 more\)"):
        build_teacher("test_vit", tmp_path / "extra.safetensors")


def test_checkpoint_without_a_head_is_accepted(weights: dict[str, torch.Tensor], tmp_path: Path) -> None:
    save_file({k: v for k, v in weights.items() if not k.startswith("head.")}, str(tmp_path / "body.safetensors"))
    save_file(weights, str(tmp_path / "full.safetensors"))
    body = build_teacher("test_vit", tmp_path / "body.safetensors")
    assert not body.head_loaded and own_head(body) is None
    assert body.weights_hash == build_teacher("test_vit", tmp_path / "full.safetensors").weights_hash


def test_checkpoint_with_a_ten_class_head_gives_its_own_head(weights: dict[str, torch.Tensor], tmp_path: Path) -> None:
    state = weights | {"head.weight": torch.randn(10, 64), "head.bias": torch.randn(10)}
    save_file(state, str(tmp_path / "cifar.safetensors"))
    teacher = build_teacher("test_vit", tmp_path / "cifar.safetensors")
    head = own_head(teacher)
    assert teacher.model.num_classes == 10 and head is not None and torch.equal(head["weight"], state["head.weight"])


def test_random_weights_are_seeded() -> None:
    a, b, c = (build_teacher("test_vit", random_weights=True, seed=s) for s in (0, 0, 1))
    assert a.weights_hash == b.weights_hash != c.weights_hash
    assert a.random_weights and a.weights_source == "random (seed 0)"
    assert a.preprocessing.input_size == (160, 160) and a.preprocessing.interpolation == "bicubic"


def test_refusals_are_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached: the hub is tried
    with pytest.raises(CdeitError, match="timm has no model named 'no_such_vit'"):
        build_teacher("no_such_vit")
    with pytest.raises(CdeitError, match="exclude each other"):
        build_teacher("test_vit", tmp_path / "x.pth", random_weights=True)
    with pytest.raises(CdeitError, match="checkpoint .*missing.pth does not exist"):
        build_teacher("test_vit", tmp_path / "missing.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(CdeitError, match="junk.safetensors is not a valid .safetensors file"):
        build_teacher("test_vit", tmp_path / "junk.safetensors")

    def offline(*args: object, pretrained: bool = False, **kwargs: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(CdeitError, match=r"could not load the pretrained weights of test_vit .*pass --checkpoint FILE"):
        build_teacher("test_vit")
