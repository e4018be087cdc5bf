"""The demo's teacher stage prefers real weights: a --checkpoint, else the local HF cache, before any network probe."""

from __future__ import annotations

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


def test_demo_teacher_uses_the_cache_or_the_checkpoint_instead_of_random_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The precompute command the demo runs: no --random-weights and no network probe when the weights are in the
    local HF cache or a --checkpoint is given. (That such a teacher has the same weights hash whatever the source
    is tests/precompute/test_teacher_sources.py's identity test.)"""
    torch.manual_seed(11)
    model = timm.create_model("test_vit.r160_in1k")
    fake_hf_cache(tmp_path / "hub", "timm/test_vit.r160_in1k", model)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(demo, "hub_reachable", _probe_fails)
    commands: list[tuple[str, ...]] = []
    monkeypatch.setattr(demo, "_run", lambda *argv: commands.append(argv))
    demo._teacher(tmp_path / "data", tmp_path / "from-cache", "test_vit", "cpu")
    assert commands[-1][0] == "precompute-teacher" and "--random-weights" not in commands[-1]
    assert "--checkpoint" not in commands[-1]

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    demo._teacher(tmp_path / "data", tmp_path / "from-file", "test_vit", "cpu", checkpoint=tmp_path / "w.safetensors")
    argv = commands[-1]
    assert "--random-weights" not in argv and argv[argv.index("--checkpoint") + 1] == str(tmp_path / "w.safetensors")


def test_demo_without_weights_anywhere_falls_back_to_the_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(demo, "hub_reachable", lambda timeout=3.0: False)
    assert demo.pretrained_available("test_vit", None) is False
    assert demo.pretrained_available("test_vit", tmp_path / "w.safetensors") is True
