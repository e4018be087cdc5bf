"""The demo's teacher stage prefers real weights: a --checkpoint, else the local HF cache, before any network probe."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

import cdeit.common.demo as demo
from tests.precompute.helpers import fake_hf_cache


def _probe_fails() -> bool:
    raise AssertionError("the demo probed the network although the weights were at hand")


@pytest.mark.slow  # two small precompute runs (about 10 s)
def test_demo_teacher_uses_the_cache_or_the_checkpoint_instead_of_random_weights(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(11)
    model = timm.create_model("test_vit.r160_in1k")
    fake_hf_cache(tmp_path / "hub", "timm/test_vit.r160_in1k", model)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(demo, "hub_reachable", _probe_fails)
    demo._teacher(tiny_dataset, tmp_path / "from-cache", "test_vit", "cpu")
    cached = json.loads((tmp_path / "from-cache" / "manifest.json").read_text())["provenance"]
    assert cached["random_weights"] is False and "local Hugging Face cache" in cached["weights_source"]

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    demo._teacher(tiny_dataset, tmp_path / "from-file", "test_vit", "cpu", checkpoint=tmp_path / "w.safetensors")
    filed = json.loads((tmp_path / "from-file" / "manifest.json").read_text())["provenance"]
    assert filed["weights_source"] == "checkpoint w.safetensors" and filed["weights_hash"] == cached["weights_hash"]


def test_demo_without_weights_anywhere_falls_back_to_the_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(demo, "hub_reachable", lambda timeout=3.0: False)
    assert demo.pretrained_available("test_vit", None) is False
    assert demo.pretrained_available("test_vit", tmp_path / "w.safetensors") is True
