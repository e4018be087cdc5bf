"""Teacher precompute throughput: images/s of the real teacher architecture on 32px uint8 inputs.

Times exactly what pass 1 of `cdeit precompute-teacher` does per batch: host-to-device copy of 32px uint8
images (pinned memory, non-blocking), device-side resize to the teacher's input size with its interpolation
and normalisation, the frozen backbone forward (bf16 autocast and fused attention on CUDA, float32 on CPU)
and the float16 pre-logit features copied back. Random weights: speed does not depend on them. The FFCV
loader is left out (it reads 2 M images/s at 32px, see docs/benchmarks.md); so is writing the shards.

    python bench/bench_precompute.py [--device auto] [--batch-size N] [--images N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import timm  # noqa: E402
import torch  # noqa: E402

from cdeit.common.device import resolve_device  # noqa: E402
from cdeit.common.preprocess import DeviceResize  # noqa: E402
from cdeit.common.teacher import build_teacher  # noqa: E402
from cdeit.precompute.features import extract_features  # noqa: E402
from cdeit.precompute.run import BATCH_CPU, BATCH_CUDA  # noqa: E402

FULL_DATASET = 539_000  # 495k train + 22k val + 22k test images


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="deit3_small_patch16_224", help="timm model name")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--batch-size", type=int, default=None, help="default: the command's, 1024 on CUDA, 64 on CPU")
    p.add_argument("--images", type=int, default=None, help="images per repeat; default: 32768 on CUDA, 256 on CPU")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    return p.parse_args()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_pass(teacher, resize, batches, device: torch.device) -> float:  # noqa: ANN001
    """Seconds to run every host batch through copy, resize, forward and back."""
    amp = device.type == "cuda"
    sync(device)
    start = time.perf_counter()
    outputs = []
    for host in batches:
        images = host.to(device, non_blocking=True)
        outputs.append(extract_features(teacher, resize, images, amp))
    torch.cat(outputs).cpu()  # features back on the host, as pass 1 writes them
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    args = parse()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(args.threads)
    batch = args.batch_size or (BATCH_CUDA if cuda else BATCH_CPU)
    n = args.images or (32768 if cuda else 256)
    teacher = build_teacher(args.model, random_weights=True)
    teacher.model.to(device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
    resize = DeviceResize(teacher.preprocessing, device, channels_last=cuda)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    batches = [b.pin_memory() if cuda else b for b in images.split(batch)]
    one_pass(teacher, resize, batches[:2], device)  # warm-up: kernels, allocator, autotuning
    times = [one_pass(teacher, resize, batches, device) for _ in range(args.repeats)]
    rates = [n / t for t in times]
    name = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or platform.machine()} CPU"
    dtype = "bfloat16 autocast + fused attention" if cuda else "float32"
    print(f"device      {name} ({device}), threads {torch.get_num_threads()}")
    print(f"versions    python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}")
    print(f"teacher     {args.model}, {teacher.preprocessing.input_size} {teacher.preprocessing.interpolation}")
    print(f"setup       batch {batch}, {n} images x {args.repeats} repeats, {dtype}")
    print(f"images/s    median {statistics.median(rates):,.1f} (runs: {', '.join(f'{r:,.1f}' for r in rates)})")
    print(f"539k images {FULL_DATASET / statistics.median(rates):,.0f} s at that rate (pass 1 only)")


if __name__ == "__main__":
    main()
