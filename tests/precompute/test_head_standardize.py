"""`--head-standardize`: the fit runs on z-scored features and the result is folded into a raw-feature head."""

from __future__ import annotations

import torch

from cdeit.common.head import HeadFit, fit_head


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))  # the same classes in every split
    x = (centres[y] + 0.5 * torch.randn(n, 16, generator=g)) * 3e-4 + 5e-3  # tiny and offset, as collapsed features
    return x, y


def test_folded_head_equals_the_standardised_fit_and_learns_tiny_features() -> None:
    train, val = _data(400, 0), _data(200, 1)
    fit = HeadFit(epochs=40, lr=1e-2, batch_size=128, standardize=True)
    weight, bias, info = fit_head(train, val, 4, fit, torch.device("cpu"))
    x = val[0]
    mean, std = train[0].mean(0), train[0].std(0)
    standardised = ((x - mean) / std) @ (weight * std).T + (bias + weight @ mean)
    assert torch.allclose(x @ weight.T + bias, standardised, atol=1e-3)
    raw_acc = ((x @ weight.T + bias).argmax(1) == val[1]).float().mean().item()
    assert raw_acc == info["val_accuracy"] > 0.9
    plain = fit_head(train, val, 4, HeadFit(epochs=40, lr=5e-5, batch_size=128), torch.device("cpu"))
    assert plain[2]["val_accuracy"] < info["val_accuracy"]  # the paper's raw fit barely moves on such features
