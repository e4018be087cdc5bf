"""Splitting the shards over machines (`--shard-index/--num-shards`) and over `torchrun` ranks."""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from cdeit.common.cache import ShardSpec


@dataclass(frozen=True)
class DistEnv:
    """This process's place under torchrun (rank 0 of 1 without it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0


def dist_env() -> DistEnv:
    """Read RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them."""
    env = os.environ
    return DistEnv(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def assign_shards(
    plan: Sequence[ShardSpec], shard_index: int = 0, num_shards: int = 1, rank: int = 0, world: int = 1
) -> list[ShardSpec]:
    """The shards one process computes: round-robin over machines (`shard_index` of `num_shards`), then over
    the ranks of that machine. Every shard of the plan goes to exactly one (machine, rank)."""
    machine = [s for g, s in enumerate(plan) if g % num_shards == shard_index]
    return [s for j, s in enumerate(machine) if j % world == rank]


@contextlib.contextmanager
def process_group(env: DistEnv) -> Iterator[None]:
    """A gloo group for barriers when several ranks run (nothing else is exchanged), else nothing."""
    if env.world == 1:
        yield
        return
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=env.rank, world_size=env.world, timeout=datetime.timedelta(hours=12))
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.world > 1:
        import torch.distributed as dist

        dist.barrier()
