"""Accuracy and mean top-1 confidence of evaluated runs, from RUN/eval/SPLIT.json's reliability bins.

ECE says how far confidence is from accuracy, not in which direction; this says which (docs/consistent-views.md).
The mean confidence is the bins' mean confidences weighted by their counts (exact: each bin's mean is over its
samples). Groups runs by their directory name less the `-sSEED` suffix and prints mean ± std over the seeds.

    python bench/confidence.py RUN [RUN ...] [--split test]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def accuracy_and_confidence(run: Path, split: str) -> tuple[float, float]:
    result = json.loads((run / "eval" / f"{split}.json").read_text())
    bins = result["reliability"]
    n = sum(bins["count"])
    confidence = sum(c * x for c, x in zip(bins["count"], bins["confidence"], strict=True) if c) / n
    return float(result["accuracy"]), confidence


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    groups: dict[str, list[tuple[float, float]]] = {}
    for run in args.runs:
        groups.setdefault(re.sub(r"-s\d+$", "", run.name), []).append(accuracy_and_confidence(run, args.split))
    print(f"{'group':24s} {'n':>2s} {'accuracy (%)':>15s} {'mean confidence':>17s} {'gap':>7s}")
    for name, rows in groups.items():
        acc, conf = [100 * a for a, _ in rows], [c for _, c in rows]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        gap = statistics.mean(conf) - statistics.mean(acc) / 100
        print(f"{name:24s} {len(rows):2d} {statistics.mean(acc):8.2f} ± {sd(acc):4.2f} "
              f"{statistics.mean(conf):9.3f} ± {sd(conf):.3f} {gap:+7.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
