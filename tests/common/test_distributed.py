"""The one distributed helper: torchrun's environment, splitting shards over machines and ranks, collectives."""

from __future__ import annotations

import datetime
import socket

import pytest
import torch

from cdeit.common.cache import plan_shards
from cdeit.common.distributed import DistEnv, all_reduce_sum, assign_shards, barrier, dist_env, process_group


@pytest.mark.parametrize(("machines", "world"), [(1, 1), (2, 1), (1, 3), (3, 2), (4, 4)])
def test_assign_shards_gives_every_shard_to_exactly_one_process(machines: int, world: int) -> None:
    plan = plan_shards({"train": 1000, "val": 130, "test": 130}, 100)
    taken = [s for m in range(machines) for r in range(world) for s in assign_shards(plan, m, machines, r, world)]
    assert sorted(taken, key=plan.index) == plan
    sizes = [len(assign_shards(plan, m, machines, r, world)) for m in range(machines) for r in range(world)]
    assert max(sizes) - min(sizes) <= 1


def test_dist_env_reads_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (dist_env().rank, dist_env().world, dist_env().local_rank) == (0, 1, 0)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (dist_env().rank, dist_env().world, dist_env().local_rank) == (3, 4, 1)


def test_one_process_needs_no_group() -> None:
    env = DistEnv()
    assert env.main and not env.enabled
    with process_group(env) as inside:
        t = torch.tensor([2.0])
        assert all_reduce_sum(t, inside) is t and t.item() == 2.0
        barrier(inside)
    assert not torch.distributed.is_initialized()


def _rank(rank: int, port: int, results: torch.Tensor) -> None:
    import os

    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    env = DistEnv(rank, 2, rank)
    with process_group(env, timeout=datetime.timedelta(seconds=60)):
        total = all_reduce_sum(torch.tensor([float(rank + 1)]), env)
        barrier(env)
    results[rank] = total


@pytest.mark.distributed
def test_two_gloo_processes_sum_and_meet() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = torch.zeros(2).share_memory_()
    torch.multiprocessing.spawn(_rank, args=(port, results), nprocs=2)
    assert results.tolist() == [3.0, 3.0]
