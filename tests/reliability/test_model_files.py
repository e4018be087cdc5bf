"""Defect 1 (issue 12): a model file's metadata never chooses what timm loads.

A crafted `.safetensors` naming another model with `pretrained=True` and a `pretrained_cfg_overlay` pointing at a
pickle made timm 1.0.9 run the pickle. cdeit now accepts only its own model names and a fixed set of checked
keyword arguments, so none of these files reach timm.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cdeit.common.errors import CdeitError
from cdeit.train.core.models import CONFIG_KEY, build_student, load_safetensors, save_safetensors

SMALL = {"depth": 1, "embed_dim": 48, "num_heads": 3}


class _Payload:
    """Unpickling this writes a marker file: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil_pth(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": _Payload(marker)}, fh)
    return path, marker


def _crafted(path: Path, config: object) -> Path:
    """A safetensors file with real student weights and the given (hostile) model config in its metadata."""
    model = build_student("vit", **SMALL)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "pt", CONFIG_KEY: json.dumps(config)})
    return path


def _hostile_configs(evil: Path) -> dict[str, tuple[object, str]]:
    overlay = {"file": str(evil), "num_classes": 10}
    return {
        "other model, pretrained file": (
            {"model_name": "vit_tiny_patch16_224", "kwargs": {"pretrained": True, "pretrained_cfg_overlay": overlay}},
            "model argument 'pretrained'",  # a `train --model` file: timm's name, but nothing that loads weights
        ),
        "own model, pretrained file": (
            {"model_name": "vit_tiny_patch4_32", "kwargs": {"pretrained": True, "pretrained_cfg_overlay": overlay}},
            "model argument 'pretrained'",
        ),
        "own model, overlay only": (
            {"model_name": "vit_tiny_patch4_32", "kwargs": {"pretrained_cfg_overlay": overlay}},
            "model argument 'pretrained_cfg_overlay'",
        ),
        "own model, checkpoint_path": (
            {"model_name": "vit_tiny_patch4_32", "kwargs": {"checkpoint_path": str(evil)}},
            "model argument 'checkpoint_path'",
        ),
        "hf-hub name": ({"model_name": "hf-hub:attacker/evil", "kwargs": {}}, "hf-hub:attacker/evil"),
        "local-dir name": ({"model_name": f"local-dir:{evil.parent}", "kwargs": {}}, "local-dir:"),
        "kwargs not a dict": ({"model_name": "vit_tiny_patch4_32", "kwargs": ["pretrained"]}, "not a cdeit model"),
        "extra top-level key": (
            {"model_name": "vit_tiny_patch4_32", "kwargs": {}, "pretrained": True},
            "not a cdeit model",
        ),
        "not JSON object": ("vit_tiny_patch4_32", "not a cdeit model"),
        "depth as string": ({"model_name": "vit_tiny_patch4_32", "kwargs": {"depth": "1"}}, 'depth="1"'),
        "depth as bool": ({"model_name": "vit_tiny_patch4_32", "kwargs": {"depth": True}}, "depth=true"),
        "negative embed_dim": ({"model_name": "vit_tiny_patch4_32", "kwargs": {"embed_dim": -4}}, "embed_dim=-4"),
        "huge depth": ({"model_name": "vit_tiny_patch4_32", "kwargs": {"depth": 10**9}}, "depth=1000000000"),
        "NaN rate": ({"model_name": "vit_tiny_patch4_32", "kwargs": {"drop_rate": float("nan")}}, "drop_rate=NaN"),
        "other pooling": ({"model_name": "vit_tiny_patch4_32", "kwargs": {"global_pool": "avg"}}, "global_pool"),
        "head strategy on vit": (
            {"model_name": "vit_tiny_patch4_32", "kwargs": {"head_strategy": "mlp"}},
            "head_strategy applies only",
        ),
        "weights of another size": (
            {"model_name": "vit_tiny_patch4_32", "kwargs": {**SMALL, "embed_dim": 96}},
            "weights do not fit",
        ),
        "sizes that do not build": (
            {"model_name": "vit_tiny_patch4_32", "kwargs": {**SMALL, "num_heads": 5}},
            "weights do not fit",
        ),
    }


@pytest.mark.parametrize("case", list(_hostile_configs(Path("x")).keys()))
def test_hostile_model_metadata_is_refused(tmp_path: Path, evil_pth: tuple[Path, Path], case: str) -> None:
    evil, marker = evil_pth
    config, message = _hostile_configs(evil)[case]
    path = _crafted(tmp_path / "crafted.safetensors", config)
    with pytest.raises(CdeitError, match="crafted.safetensors") as info:
        load_safetensors(path)
    assert message in str(info.value)
    assert not marker.exists(), "code from the model file ran"


def test_the_payload_is_real(evil_pth: tuple[Path, Path]) -> None:
    """The fixture's pickle does run code when unpickled without weights_only: the refusals above are not vacuous."""
    evil, marker = evil_pth
    with open(evil, "rb") as fh:
        pickle.load(fh)  # noqa: S301 (the point of the test)
    assert marker.exists()


def test_own_files_still_load(tmp_path: Path) -> None:
    for kind, head in (("vit", None), ("deit", None), ("cdeit", "mlp")):
        model = build_student(kind, head, **SMALL, drop_rate=0.1, qkv_bias=False).eval()
        loaded = load_safetensors(save_safetensors(model, tmp_path / f"{kind}.safetensors"))
        x = torch.zeros(1, 3, 32, 32)
        assert torch.equal(loaded(x), model(x))
