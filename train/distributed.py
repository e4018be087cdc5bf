"""torchrun support: rank discovery, process group set-up and metric reduction (a no-op in one process)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def world_size() -> int:
    """Number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's GPU slot on its machine under torchrun (0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def setup(device_kind: str) -> Dist:
    """Join the torchrun process group (NCCL on GPUs, Gloo on CPUs) when WORLD_SIZE > 1."""
    world = world_size()
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), local_rank()
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local)


def all_reduce_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Sum a tensor over ranks (in place) and return it."""
    if d.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
