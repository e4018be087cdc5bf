"""Data-stage benchmark: `cdeit data prepare` time and peak memory, `.beton` size, and read throughput.

Read throughput compares one epoch in random order through cdeit's FFCV loader against a plain
torch DataLoader over the same uint8 arrays (TensorDataset, shuffle), both producing uint8 NCHW batches.

    python bench/bench_data.py prepare --cifar10 DIR --out DATA [--per-class-per-type 4500,200,200] [--workers 2]
    python bench/bench_data.py folder --size 64 --per-class 300 --out FOLDER   # procedural image folder at a size
    python bench/bench_data.py prepare --image-folder FOLDER --out DATA --per-class-per-type 200,20,20
    python bench/bench_data.py read --data DATA [--split train] [--batch-size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def bench_folder(args: argparse.Namespace) -> None:
    """A procedural image folder (data.synthetic) at --size px, --per-class images of each of the 10 classes."""
    from cdeit.data.synthetic import write_synthetic_folder

    start = time.perf_counter()
    write_synthetic_folder(args.out, args.per_class, size=args.size)
    print(f"folder {args.out}: {10 * args.per_class} images at {args.size}px in {time.perf_counter() - start:.1f} s")


def bench_prepare(args: argparse.Namespace) -> None:
    source = ["--cifar10", args.cifar10] if args.cifar10 else ["--image-folder", args.image_folder]
    cmd = [sys.executable, "-m", "cdeit.common.cli", "data", "prepare", *source, "--corruptions",
           "generate", "--out", args.out, "--per-class-per-type", args.per_class_per_type, "--workers",
           str(args.workers)]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak = 0

    def sample() -> None:
        nonlocal peak
        while proc.poll() is None:
            peak = max(peak, _tree_rss_bytes(proc.pid))
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    rc = proc.wait()
    thread.join()
    seconds = time.perf_counter() - start
    sizes = {p.name: p.stat().st_size for p in sorted(Path(args.out).glob("*.beton"))}
    import json

    manifest = json.loads((Path(args.out) / "manifest.json").read_text()) if rc == 0 else {}
    images = sum(info["count"] for info in manifest.get("splits", {}).values())
    size = manifest.get("image_size", 32)
    print(f"prepare rc={rc} seconds={seconds:.1f} peak_tree_rss_GiB={peak / 2**30:.2f} workers={args.workers} "
          f"images={images} size={size}px images_per_s={images / seconds:,.0f}")  # fmt: skip
    for name, size in sizes.items():
        print(f"  {name}: {size / 2**20:.1f} MiB")


def bench_read(args: argparse.Namespace) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from cdeit.common.dataset import beton_path, make_loader, read_split

    path = beton_path(args.data, args.split)
    arrays = read_split(path, fields=("image", "label"))
    n = len(arrays["label"])
    images = torch.from_numpy(arrays["image"]).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW, as FFCV gives
    labels = torch.from_numpy(arrays["label"])
    loader = make_loader(path, args.batch_size, "random", "cpu", fields=("image", "label"), drop_last=False,
                         workers=args.workers)  # fmt: skip
    for _ in loader:  # first epoch pays numba compilation
        pass

    def epoch_ffcv() -> float:
        t = time.perf_counter()
        for x, _y in loader:
            x.sum()  # touch the batch
        return n / (time.perf_counter() - t)

    def epoch_torch(workers: int) -> float:
        dl = DataLoader(TensorDataset(images, labels), batch_size=args.batch_size, shuffle=True, num_workers=workers)
        t = time.perf_counter()
        for x, _y in dl:
            x.sum()
        return n / (time.perf_counter() - t)

    ffcv = [epoch_ffcv() for _ in range(args.repeats)]
    torch0 = [epoch_torch(0) for _ in range(args.repeats)]
    print(f"platform={platform.platform()} cpus={os.cpu_count()} torch={torch.__version__} split={args.split} "
          f"images={n} batch={args.batch_size} repeats={args.repeats}")  # fmt: skip
    print(f"FFCV random order ({args.workers} threads): median {statistics.median(ffcv):,.0f} images/s")
    print(f"torch DataLoader shuffle (0 workers):       median {statistics.median(torch0):,.0f} images/s")
    print(f"ratio FFCV / DataLoader: {statistics.median(ffcv) / statistics.median(torch0):.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("folder")
    f.add_argument("--size", type=int, default=64)
    f.add_argument("--per-class", type=int, default=300)
    f.add_argument("--out", required=True)
    p = sub.add_parser("prepare")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--cifar10")
    source.add_argument("--image-folder")
    p.add_argument("--out", required=True)
    p.add_argument("--per-class-per-type", default="4500,200,200")
    p.add_argument("--workers", type=int, default=2)
    r = sub.add_parser("read")
    r.add_argument("--data", required=True)
    r.add_argument("--split", default="train")
    r.add_argument("--batch-size", type=int, default=512)
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    {"prepare": bench_prepare, "folder": bench_folder, "read": bench_read}[args.what](args)


if __name__ == "__main__":
    main()
