"""Metrics of the paper (Section 3.5): top-1 accuracy, ECE with equal-width bins (Eq. 8-9), mCE (Eq. 10).

Everything works on whole tensors (torch or numpy via torch.as_tensor); no per-sample Python.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

ECE_BINS = 15


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    if len(labels) == 0:
        return float("nan")
    return (probs.argmax(dim=1) == labels).float().mean().item()


def ece_bin_stats(
    probs: torch.Tensor,
    labels: torch.Tensor,
    bins: int = ECE_BINS,
    groups: torch.Tensor | None = None,
    n_groups: int = 1,
) -> torch.Tensor:
    """Per-bin (count, sum of confidences, number correct) for equal-width confidence bins on (0, 1].

    Sums, not means, so that statistics of several processes (or batches) can be added before the ECE.
    Bin m holds confidences in ((m-1)/M, m/M], as in Guo et al. (2017). Shape (3, bins); with `groups`
    (B,) in 0..n_groups-1, one such table per group: (n_groups, 3, bins), all groups in one pass.
    """
    probs, labels = torch.as_tensor(probs), torch.as_tensor(labels)
    conf, pred = probs.float().max(dim=1)
    idx = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)
    if groups is not None:
        idx = torch.as_tensor(groups, device=idx.device).long() * bins + idx
    stats = torch.zeros(3, n_groups * bins, dtype=torch.float64, device=probs.device)
    stats[0].index_add_(0, idx, torch.ones_like(conf, dtype=torch.float64))
    stats[1].index_add_(0, idx, conf.double())
    stats[2].index_add_(0, idx, (pred == labels.to(pred.device)).double())
    if groups is None:
        return stats
    return stats.view(3, n_groups, bins).transpose(0, 1)


def ece_from_stats(stats: torch.Tensor) -> float:
    """ECE = sum_m |B_m| / n * |acc(B_m) - conf(B_m)| (Eq. 9) from `ece_bin_stats` sums."""
    count, conf_sum, correct = stats
    n = count.sum()
    if n == 0:
        return float("nan")
    return (torch.abs(correct - conf_sum).sum() / n).item()


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error with `bins` equal-width bins, in [0, 1]."""
    return ece_from_stats(ece_bin_stats(probs, labels, bins))


def ece_per_group(
    probs: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, n_groups: int, bins: int = ECE_BINS
) -> torch.Tensor:
    """ECE (Eq. 9) within each group, all groups at once: (n_groups,) float64, NaN for an empty group."""
    count, conf_sum, correct = ece_bin_stats(probs, labels, bins, groups, n_groups).unbind(1)  # each (G, bins)
    return torch.abs(correct - conf_sum).sum(1) / count.sum(1)


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> dict[str, list]:
    """The reliability diagram's table: per confidence bin, the count, accuracy and mean confidence (None if empty)."""
    count, conf_sum, correct = ece_bin_stats(probs, labels, bins)
    acc, conf = correct / count, conf_sum / count  # NaN where a bin is empty

    def listed(x: torch.Tensor) -> list[float | None]:
        return [None if v != v else v for v in x.tolist()]  # NaN -> None (JSON)

    return {"count": [int(c) for c in count.tolist()], "accuracy": listed(acc), "confidence": listed(conf)}


def corruption_errors(
    errors: Mapping[str, Mapping[int, float]], baseline: Mapping[str, Mapping[int, float]]
) -> dict[str, float]:
    """CE_c = sum_s E_{s,c} / sum_s E_{s,c}^baseline for each corruption c (errors in [0, 1])."""
    out = {}
    for name, per_severity in errors.items():
        base = sum(baseline[name][s] for s in per_severity)
        out[name] = sum(per_severity.values()) / base if base > 0 else float("nan")
    return out


def mce(errors: Mapping[str, Mapping[int, float]], baseline: Mapping[str, Mapping[int, float]]) -> float:
    """mCE (Eq. 10): the mean over corruptions of the model's summed error over the baseline's."""
    ces = corruption_errors(errors, baseline)
    return sum(ces.values()) / len(ces) if ces else float("nan")
