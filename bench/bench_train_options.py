"""Training throughput with the options of issue 23: does --model-ema or --grad-accum-steps slow a step?

Arms, one Trainer each in one process on the same data, student, global batch and device, with the cached-logit
teacher of bench_train.py: `base` (Table 1), `ema` (--model-ema, timm's ModelEmaV3 after each optimizer step),
`accum2` (--grad-accum-steps 2: two micro-batches of batch / 2 per step) and `aa` (--aa rand-m9-mstd0.5, timm's
per-image RandAugment on the CPU). Each arm is timed for `--seconds` in each of `--repeats` interleaved rounds
(after one warm-up step); the medians and each arm's ratio to `base` are printed.

    python bench/bench_train_options.py --data DATA [--batch-size 64] [--seconds 20] [--repeats 2] [--arms ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the `cdeit` command line sets it (common/cli.py)

import torch  # noqa: E402

from cdeit.common.dataset import load_manifest  # noqa: E402
from cdeit.common.device import resolve_device  # noqa: E402
from cdeit.train.core.config import TrainConfig  # noqa: E402
from cdeit.train.core.engine import train_step  # noqa: E402
from cdeit.train.core.trainer import Trainer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import _sync, cached_table  # noqa: E402

ARMS: dict[str, dict[str, Any]] = {
    "base": {},
    "ema": {"model_ema": True},
    "accum2": {"grad_accum_steps": 2},
    "aa": {"aa": "rand-m9-mstd0.5"},
}


def build(data: str, batch_size: int, arms: list[str], device: str, compile: bool, **config: Any) -> dict[str, Any]:
    """One Trainer per arm (DeiT, hard distillation from a cached table of the real shape)."""
    out = Path(tempfile.mkdtemp(prefix="bench-options-"))
    manifest = load_manifest(data)
    n, classes = manifest["splits"]["train"]["count"], len(manifest["classes"])
    common = dict(student="deit", distill="hard", teacher_cache="(in memory)", data=data, batch_size=batch_size,
                  device=device, epochs=1, workers=os.cpu_count() or 2, compile=compile, **config)  # fmt: skip
    trainers = {}
    for arm in arms:
        cfg = TrainConfig(out=str(out / arm), **(common | ARMS[arm]))
        trainers[arm] = Trainer(cfg, teacher=cached_table(n, classes, resolve_device(device)))
    return trainers


def micro_batches(trainer: Trainer) -> Iterator[tuple[Any, int]]:
    """(batch, micro index) forever, epoch after epoch, whole optimizer steps only."""
    accum = trainer.cfg.grad_accum_steps
    epoch = 0
    while True:
        trainer.train_loader.next_epoch = epoch
        whole = len(trainer.train_loader) // accum * accum
        for j, batch in enumerate(trainer.train_loader):
            if j < whole:
                yield batch, j % accum
        epoch += 1


def timed(trainer: Trainer, it: Iterator[tuple[Any, int]], seconds: float) -> float:
    """Images per second over whole optimizer steps for at least `seconds`."""
    _sync(trainer.device)
    start, images = time.perf_counter(), 0
    while True:
        batch, micro = next(it)
        train_step(trainer.engine, batch, trainer.state, micro)
        images += batch[0].shape[0]
        if micro == trainer.cfg.grad_accum_steps - 1:
            _sync(trainer.device)
            if time.perf_counter() - start >= seconds:
                return images / (time.perf_counter() - start)


def benchmark(trainers: dict[str, Trainer], seconds: float, repeats: int) -> dict[str, Any]:
    """Median images/s per arm over interleaved rounds, and each arm's ratio to the first."""
    its = {name: micro_batches(t) for name, t in trainers.items()}
    for name, trainer in trainers.items():  # warm-up: one optimizer step each
        trainer.model.train()
        timed(trainer, its[name], 0.0)
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(repeats):
        for name, trainer in trainers.items():
            rates[name].append(timed(trainer, its[name], seconds))
    med = {k: statistics.median(v) for k, v in rates.items()}
    first = next(iter(trainers.values()))
    dev = first.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    return {"device": f"{dev} ({name})", "torch": torch.__version__, "batch_size": first.cfg.batch_size,
            "seconds": seconds, "repeats": repeats, "threads": torch.get_num_threads(), "rates": rates,
            "median": med, "ratio": {k: v / next(iter(med.values())) for k, v in med.items()}}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    r = benchmark(build(args.data, args.batch_size, args.arms, args.device, args.compile), args.seconds, args.repeats)
    print(f"device={r['device']} torch={r['torch']} batch={r['batch_size']} {r['repeats']} x {r['seconds']:g} s "
          f"per arm, threads={r['threads']}")  # fmt: skip
    for k, runs in r["rates"].items():
        print(f"{k:7s} median {r['median'][k]:9,.1f} images/s  x{r['ratio'][k]:.3f}  runs: "
              + ", ".join(f"{x:,.1f}" for x in runs))  # fmt: skip


if __name__ == "__main__":
    main()
