"""torchrun support for every stage: this process's place, the process group, barriers, sums and work splitting.

Without torchrun (WORLD_SIZE unset or 1) everything here is a no-op, so one code path serves one process and
many. torch is imported only where a process group is needed: `cdeit --help` stays fast.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """This process's place under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes shared files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Several processes: collectives and barriers are needed."""
        return self.world > 1


def dist_env() -> DistEnv:
    """Read RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them; values no launcher would set (a stale RANK=1
    in a shell, WORLD_SIZE=abc) are one sentence, not a silent exit or a wait for ranks that never come."""
    from cdeit.common.errors import CdeitError

    values = {}
    for key, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)):
        text = os.environ.get(key, "").strip() or str(default)
        if not text.isdigit() or int(text) > 1 << 20:
            raise CdeitError(f"environment variable {key}={text!r} is not a process count or rank torchrun sets; "
                             f"unset it, or start cdeit with torchrun.")  # fmt: skip
        values[key] = int(text)
    rank, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or rank >= world or local >= world:
        raise CdeitError(f"environment variables RANK={rank}, LOCAL_RANK={local} and WORLD_SIZE={world} do not "
                         "describe a torchrun process; unset them (a leftover of another job?), or start cdeit with "
                         "torchrun.")  # fmt: skip
    return DistEnv(rank, world, local)


def setup(env: DistEnv, device_type: str = "cpu", timeout: datetime.timedelta | None = None) -> DistEnv:
    """Join the torchrun process group when several processes run (NCCL for CUDA devices, Gloo otherwise).

    `device_type="cpu"` asks for Gloo even on a GPU machine (precompute only needs barriers); `timeout` is
    how long a collective may wait for the slowest rank (torch's default when None).
    """
    if not env.enabled:
        return env
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(env.local_rank)
        kwargs = {} if timeout is None else {"timeout": timeout}
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world, **kwargs)
    return env


def teardown(env: DistEnv) -> None:
    """Leave the process group (after the last collective)."""
    if env.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


@contextlib.contextmanager
def process_group(
    env: DistEnv, device_type: str = "cpu", timeout: datetime.timedelta | None = None
) -> Iterator[DistEnv]:
    """`setup` on entry and `teardown` on exit (also after an error), for a stage that runs inside one block."""
    setup(env, device_type, timeout)
    try:
        yield env
    finally:
        teardown(env)


def barrier(env: DistEnv) -> None:
    """Wait for every rank (nothing without torchrun)."""
    if env.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_reduce_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a tensor over ranks (in place) and return it."""
    if env.enabled:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def assign_shards(
    items: Sequence[T], shard_index: int = 0, num_shards: int = 1, rank: int = 0, world: int = 1
) -> list[T]:
    """The items (cache shards) one process handles: round-robin over machines (`shard_index` of `num_shards`),
    then over the ranks of that machine. Every item goes to exactly one (machine, rank)."""
    machine = [s for g, s in enumerate(items) if g % num_shards == shard_index]
    return [s for j, s in enumerate(machine) if j % world == rank]
