"""The linear head fit (paper 4.1), head files and the device-side resize."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cdeit.common.errors import CdeitError
from cdeit.common.head import HeadFit, LinearHead, fit_head, load_head, save_head
from cdeit.common.preprocess import DeviceResize, Preprocessing

TEACHER = SimpleNamespace(name="stub", num_features=16, weights_hash="sha256:t")


def separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float16 features whose class means differ (a linear head can learn them)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    means = torch.randn(10, 16, generator=torch.Generator().manual_seed(99)) * 3
    return (means[labels] + torch.randn(n, 16, generator=g)).half(), labels


def test_fit_head_is_deterministic_and_keeps_the_best_val_epoch() -> None:
    train, val = separable(2000, 0), separable(300, 1)
    fit = HeadFit(epochs=6, lr=5e-3, batch_size=256, seed=0)
    w1, b1, result = fit_head(train, val, 10, fit, torch.device("cpu"))
    w2, b2, _ = fit_head(train, val, 10, fit, torch.device("cpu"))
    assert torch.equal(w1, w2) and torch.equal(b1, b2)
    w3, _, _ = fit_head(train, val, 10, HeadFit(epochs=6, lr=5e-3, batch_size=256, seed=1), torch.device("cpu"))
    assert not torch.equal(w1, w3)
    history = result["val_accuracy_per_epoch"]
    assert result["val_accuracy"] == pytest.approx(max(history), abs=1e-6) and result["val_accuracy"] > 0.9
    assert result["best_epoch"] == int(np.argmax(history)) + 1
    accuracy = (LinearHead(w1, b1).logits(val[0].numpy()).argmax(1) == val[1].numpy()).mean()
    assert accuracy == pytest.approx(result["val_accuracy"])


def test_head_logits_are_features_times_weight_plus_bias() -> None:
    head = LinearHead(torch.randn(10, 16), torch.randn(10))
    features = torch.randn(5, 16).half()
    expected = features.double() @ head.weight.double().T + head.bias.double()
    assert np.array_equal(head.logits(features.numpy()), expected.float().numpy())


def test_head_file_round_trip_and_refusals(tmp_path: Path) -> None:
    head = LinearHead(torch.randn(10, 16), torch.randn(10), {"source": "fitted", "weights_hash": "sha256:t"})
    save_head(tmp_path / "head.safetensors", head)
    back = load_head(tmp_path / "head.safetensors", TEACHER, 10)
    assert back.hash == head.hash and back.meta["source"] == "fitted"
    with pytest.raises(CdeitError, match=r"not weight \(5, 16\) and bias \(5,\)"):
        load_head(tmp_path / "head.safetensors", TEACHER, 5)
    with pytest.raises(CdeitError, match="fitted on another teacher's features"):
        load_head(tmp_path / "head.safetensors", SimpleNamespace(**{**vars(TEACHER), "weights_hash": "sha256:u"}), 10)
    with pytest.raises(CdeitError, match="does not exist"):
        load_head(tmp_path / "nope.safetensors", TEACHER, 10)


PREP = Preprocessing((64, 64), "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_resize_normalises_with_the_teacher_mean_and_std() -> None:
    images = torch.full((2, 3, 32, 32), 200, dtype=torch.uint8)
    x = DeviceResize(PREP, "cpu")(images)
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    expected = (200 / 255 - torch.tensor(PREP.mean)) / torch.tensor(PREP.std)
    assert torch.allclose(x[0, :, 10, 10], expected, atol=1e-5) and torch.allclose(x, x[:, :, :1, :1].expand_as(x))


def test_resize_clamps_the_bicubic_overshoot() -> None:
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    images[..., 16:] = 255  # a sharp edge: bicubic rings past 0 and 255 next to it
    raw = F.interpolate(images.float(), size=(64, 64), mode="bicubic", align_corners=False)
    assert raw.max() > 255 and raw.min() < 0
    x = DeviceResize(PREP, "cpu")(images)
    top = (1 - torch.tensor(PREP.mean)) / torch.tensor(PREP.std)
    low = -torch.tensor(PREP.mean) / torch.tensor(PREP.std)
    assert torch.allclose(x.amax(dim=(0, 2, 3)), top, atol=1e-5)
    assert torch.allclose(x.amin(dim=(0, 2, 3)), low, atol=1e-5)
