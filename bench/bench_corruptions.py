"""Throughput of cdeit's ten corruptions: images/s on one batch in one process, per severity.

    python bench/bench_corruptions.py [--images 2000] [--repeats 3] [--seed 0]

Images are the procedural CIFAR-layout ones of data.synthetic (shapes over gradients with noise), so
nothing needs downloading. Each cell is the median of --repeats timed calls of `corrupt` on the whole
batch, after one untimed warm-up call per corruption (it builds cached operators and loads the frost
photographs). numpy may use several BLAS threads inside the one process (zoom blur, snow).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdeit.data.corruptions import NAMES, SEVERITIES, corrupt  # noqa: E402
from cdeit.data.synthetic import render  # noqa: E402


def images_per_second(images: np.ndarray, name: str, severity: int, repeats: int, seed: int) -> float:
    """Median images/s of `repeats` calls on the whole batch."""
    times = []
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        start = time.perf_counter()
        corrupt(images, name, severity, rng)
        times.append(time.perf_counter() - start)
    return len(images) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    images = render(np.arange(args.images) % 10, rng)
    print(
        f"# {args.images} images 32x32x3 uint8, median of {args.repeats} runs; python {platform.python_version()}, "
        f"numpy {np.__version__}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"load average {os.getloadavg()[0]:.1f} (other processes compete for the CPUs)"
    )
    print("| corruption | " + " | ".join(f"sev {s}" for s in SEVERITIES) + " | all five |")
    print("|---" * (len(SEVERITIES) + 2) + "|")
    for name in NAMES:
        corrupt(images[:64], name, 1, np.random.default_rng(0))  # warm-up: caches and lazy imports
        rates = [images_per_second(images, name, s, args.repeats, args.seed) for s in SEVERITIES]
        overall = len(rates) / sum(1 / r for r in rates)  # images/s over a run that does every severity
        print(f"| {name} | " + " | ".join(f"{r:,.0f}" for r in rates) + f" | {overall:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
