"""Temperature scaling (Guo et al. 2017): one T fitted on held-out logits by minimising the NLL of softmax(z / T).

Precompute fits T on the teacher's val logits and records it in the cache manifest with the val ECE before and
after; the trainer divides the cached logits by it before it makes soft targets (`--teacher-temperature`).
Everything is computed in float64 so the fit does not depend on the device or the thread count.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from cdeit.common.errors import CdeitError

if TYPE_CHECKING:
    import torch

LOG_T_RANGE = (math.log(1e-4), math.log(1e4))  # the search interval of log T
TOLERANCE = 1e-7  # golden-section stop, in log T (a relative error of T of about 1e-7)
GOLDEN = (math.sqrt(5) - 1) / 2


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / temperature), in float64."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float((log_norm - z[np.arange(len(labels)), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the mean NLL of softmax(logits / T) on (logits, labels).

    The NLL is convex in 1/T, hence unimodal in log T: a golden-section search over log T in [1e-4, 1e4] finds it.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or not len(labels):
        raise CdeitError("fitting a temperature needs (N, classes) logits and N labels, N > 0.")
    low, high = LOG_T_RANGE
    a, b = high - GOLDEN * (high - low), low + GOLDEN * (high - low)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    while high - low > TOLERANCE:
        if fa < fb:  # the minimum lies in [low, b]
            high, b, fb = b, a, fa
            a = high - GOLDEN * (high - low)
            fa = nll(logits, labels, math.exp(a))
        else:
            low, a, fa = a, b, fb
            b = low + GOLDEN * (high - low)
            fb = nll(logits, labels, math.exp(b))
    return math.exp((low + high) / 2)


def at_search_bound(temperature: float) -> bool:
    """Whether a fitted T sits at an end of the search interval: the NLL kept falling past it (val logits all right
    and underconfident, or a val split too small to fit on), so T is no measurement of the teacher's calibration."""
    log_t = math.log(temperature)
    return min(abs(log_t - LOG_T_RANGE[0]), abs(log_t - LOG_T_RANGE[1])) < 1e-3


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """The ECE (15 bins, common.metrics) of softmax(logits / temperature)."""
    import torch

    from cdeit.common.metrics import ece

    probs = torch.softmax(torch.as_tensor(np.asarray(logits, dtype=np.float64) / temperature), dim=1)
    return ece(probs, torch.as_tensor(np.asarray(labels, dtype=np.int64)))


def calibrate(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """T fitted on (logits, labels) with the NLL and ECE before (T = 1) and after: the manifest's `calibration`."""
    t = fit_temperature(logits, labels)
    return {
        "temperature": t,
        "count": len(labels),
        "nll_before": nll(logits, labels, 1.0),
        "nll_after": nll(logits, labels, t),
        "ece_before": expected_calibration_error(logits, labels),
        "ece_after": expected_calibration_error(logits, labels, t),
    }


def scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """`logits / temperature` (a temperature of 1 returns the tensor itself)."""
    return logits if temperature == 1.0 else logits / temperature
