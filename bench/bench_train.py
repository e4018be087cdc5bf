"""Training throughput: (a) cdeit's cached-logit trainer, (b) the same student with the teacher run online
at 224px on every batch (the DeiT / timm way), (c) the same student without distillation.

All three use the same Trainer, data, student, batch and device in one process; (b) only replaces the
cached-logit gather by a teacher forward on the erased and mixed batch, upsampled on the device: the teacher of
`cdeit train --online-teacher` (train/core/online.py). (a) and (b) plug in through the Trainer's `teacher=`
extension point (a `TeacherSource`, train/core/teachers.py); each step is train/core/engine.py's `train_step`.
Also reports the share of step time the FFCV loader takes (one pass of the loader alone over as many batches).

    python bench/bench_train.py --data DATA [--batch-size 128] [--steps 20] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the `cdeit` command line sets it (common/cli.py)

import torch  # noqa: E402

from cdeit.common.cache import TeacherTargets  # noqa: E402
from cdeit.common.dataset import load_manifest  # noqa: E402
from cdeit.common.device import resolve_device  # noqa: E402
from cdeit.train.core.config import TrainConfig  # noqa: E402
from cdeit.train.core.engine import train_step  # noqa: E402
from cdeit.train.core.online import OnlineTeacher  # noqa: E402
from cdeit.train.core.teachers import CachedTeacher, TeacherSource  # noqa: E402
from cdeit.train.core.trainer import Trainer  # noqa: E402

TEACHER = "deit3_small_patch16_224"


def online_teacher(name: str, num_classes: int, device: torch.device, autocast: bool) -> OnlineTeacher:
    """(b): `cdeit train --online-teacher`'s teacher (train/core/online.py), random weights, a random 10-way head:
    each batch is erased and mixed first, then the teacher reads it upsampled on the device (bf16 on CUDA)."""
    from cdeit.common.head import LinearHead
    from cdeit.common.teacher import build_teacher
    from cdeit.train.core.models import CIFAR10_MEAN, CIFAR10_STD, Normalise

    teacher = build_teacher(name, random_weights=True)
    head = LinearHead(torch.randn(num_classes, teacher.num_features) * 0.02, torch.zeros(num_classes))
    student_normalise = Normalise(CIFAR10_MEAN, CIFAR10_STD, device)
    return OnlineTeacher(teacher, head, student_normalise, device, autocast)


def cached_table(num_samples: int, num_classes: int, device: torch.device) -> CachedTeacher:
    """(a): logits gathered by index from a device tensor, exactly as a run with a cache does.

    The table holds random logits of the real shape (N, classes): the gather costs the same.
    """
    table = TeacherTargets("same", {"logits": torch.randn(num_samples, num_classes, device=device)})
    return CachedTeacher(table, ("logits",))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(trainer: Trainer, steps: int, warmup: int) -> float:
    """Images per second over `steps` training steps after `warmup` steps."""
    trainer.model.train()
    it = iter(trainer.train_loader)
    for _ in range(warmup):
        train_step(trainer.engine, next(it), trainer.state)
    _sync(trainer.device)
    t = time.perf_counter()
    images = 0
    for _ in range(steps):
        batch = next(it)
        train_step(trainer.engine, batch, trainer.state)
        images += batch[0].shape[0]
    _sync(trainer.device)
    return images / (time.perf_counter() - t)


def loader_seconds_per_batch(trainer: Trainer, steps: int) -> float:
    it = iter(trainer.train_loader)
    next(it)
    _sync(trainer.device)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    _sync(trainer.device)
    return (time.perf_counter() - t) / steps


def build_trainers(
    data: str,
    batch_size: int,
    device: str = "auto",
    compile: bool = False,
    workers: int | None = None,
    out: Path | None = None,
    **config: Any,
) -> dict[str, Trainer]:
    """(a) cached, (b) online teacher, (c) no distillation: one Trainer each on the same data, batch and device.

    `config` holds further TrainConfig fields for all three (e.g. model_kwargs for a tiny dry run).
    """
    out = out or Path(tempfile.mkdtemp(prefix="bench-train-"))
    common = dict(data=data, batch_size=batch_size, device=device, epochs=1, workers=workers or os.cpu_count() or 2,
                  compile=compile, **config)  # fmt: skip
    manifest = load_manifest(data)
    n, classes = manifest["splits"]["train"]["count"], len(manifest["classes"])
    dev = resolve_device(device)
    autocast = dev.type == "cuda"  # the Trainer's bf16 autocast on CUDA (TrainConfig's default precision)
    teachers: dict[str, TeacherSource] = {
        "a_cached": cached_table(n, classes, dev),
        "b_online": online_teacher(TEACHER, classes, dev, autocast),
    }
    hard = dict(student="deit", distill="hard", **common)
    runs = {
        "a_cached": TrainConfig(teacher_cache="(in memory)", out=str(out / "a"), **hard),
        "b_online": TrainConfig(teacher_cache="(online)", out=str(out / "b"), **hard),
        "c_none": TrainConfig(student="deit", distill="none", out=str(out / "c"), **common),
    }
    return {name: Trainer(cfg, teacher=teachers.get(name)) for name, cfg in runs.items()}


def benchmark(trainers: dict[str, Trainer], steps: int, warmup: int, repeats: int) -> dict[str, Any]:
    """Median images/s of each trainer over interleaved repeats, the ratios, and the loader's share of a step."""
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(repeats):  # interleaved, so drift of a noisy machine hits all three alike
        for name, trainer in trainers.items():
            rates[name].append(measure(trainer, steps, warmup))
    med = {k: statistics.median(v) for k, v in rates.items()}
    a = trainers["a_cached"]
    load = loader_seconds_per_batch(a, steps)
    step = a.cfg.batch_size / med["a_cached"]
    dev = a.device
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    import timm

    return {
        "device": str(dev), "device_name": name, "torch": torch.__version__, "timm": timm.__version__,
        "batch_size": a.cfg.batch_size, "steps": steps, "warmup": warmup, "repeats": repeats,
        "autocast_bf16": a.autocast, "compile": bool(a.cfg.compile), "threads": torch.get_num_threads(),
        "rates": rates, "median": med, "a_over_b": med["a_cached"] / med["b_online"],
        "a_over_c": med["a_cached"] / med["c_none"], "loader_seconds_per_batch": load, "step_seconds": step,
        "loader_share": load / step,
    }  # fmt: skip


def report(r: dict[str, Any]) -> None:
    print(
        f"device={r['device']} ({r['device_name']}) torch={r['torch']} timm={r['timm']} batch={r['batch_size']} "
        f"steps={r['steps']} repeats={r['repeats']} autocast_bf16={r['autocast_bf16']} threads={r['threads']}"
    )
    for k, runs in r["rates"].items():
        print(f"{k:9s} median {r['median'][k]:10,.1f} images/s   runs: {', '.join(f'{x:,.1f}' for x in runs)}")
    print(f"a/b = {r['a_over_b']:.2f}x   a/c = {r['a_over_c']:.3f}")
    load, step = r["loader_seconds_per_batch"], r["step_seconds"]
    print(f"loader share of a step: {r['loader_share']:.1%} ({load * 1e3:.2f} ms of {step * 1e3:.1f} ms per batch)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    trainers = build_trainers(args.data, args.batch_size, args.device, args.compile)
    report(benchmark(trainers, args.steps, args.warmup, args.repeats))


if __name__ == "__main__":
    main()
