"""Metrics against direct computations and a hand-worked mCE example."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdeit.common.metrics import accuracy, ece, ece_bin_stats, ece_from_stats, ece_per_group, mce, reliability


def _ece_direct(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for m in range(1, bins + 1):
        in_bin = (conf > (m - 1) / bins) & (conf <= m / bins)
        if in_bin.any():
            total += in_bin.sum() / len(conf) * abs((pred[in_bin] == labels[in_bin]).mean() - conf[in_bin].mean())
    return total


def test_ece_matches_direct_computation() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (500, 10))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 10, 500)
    assert ece(torch.tensor(probs), torch.tensor(labels)) == pytest.approx(_ece_direct(probs, labels), abs=1e-9)


def test_ece_hand_example_and_summable_stats() -> None:
    # two samples at confidence 0.9 (one right, one wrong) and one at confidence 0.7 that is right:
    # bin (0.867, 0.933]: |0.5 - 0.9| * 2/3; bin (0.667, 0.733]: |1 - 0.7| * 1/3
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 1])
    assert ece(probs, labels) == pytest.approx(0.4 * 2 / 3 + 0.3 / 3)
    assert accuracy(probs, labels) == pytest.approx(2 / 3)
    split = ece_bin_stats(probs[:2], labels[:2]) + ece_bin_stats(probs[2:], labels[2:])
    assert ece_from_stats(split) == pytest.approx(ece(probs, labels))


def test_perfectly_calibrated_is_zero() -> None:
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert ece(probs, torch.tensor([0, 1])) == 0.0


def test_mce_hand_worked() -> None:
    # fog: model 0.1+0.2 = 0.3 vs baseline 0.2+0.4 = 0.6 -> 0.5 ; snow: 0.3 vs 0.2 -> 1.5 ; mean = 1.0
    model = {"fog": {1: 0.1, 2: 0.2}, "snow": {1: 0.1, 2: 0.2}}
    base = {"fog": {1: 0.2, 2: 0.4}, "snow": {1: 0.1, 2: 0.1}}
    assert mce(model, base) == pytest.approx(1.0)


def test_ece_per_group_is_the_ece_of_each_group() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (300, 10))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels, groups = rng.integers(0, 10, 300), rng.integers(0, 3, 300)  # group 3 of 4 stays empty
    per_group = ece_per_group(torch.tensor(probs), torch.tensor(labels), torch.tensor(groups), 4)
    for g in range(3):
        assert per_group[g].item() == pytest.approx(_ece_direct(probs[groups == g], labels[groups == g]), abs=1e-6)
    assert torch.isnan(per_group[3])


def test_reliability_table() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7]])
    table = reliability(probs, torch.tensor([0, 1, 1]))
    assert sum(table["count"]) == 3 and table["count"][13] == 2 and table["count"][10] == 1  # bins (13/15, 14/15]
    assert table["accuracy"][13] == pytest.approx(0.5) and table["confidence"][13] == pytest.approx(0.9)
    assert table["accuracy"][10] == 1.0 and table["accuracy"][0] is None and table["confidence"][0] is None
