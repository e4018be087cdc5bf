"""`compare`'s "What the cache saved" from the cache's recorded throughput and the runs' images seen."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdeit.common.cache import write_manifest
from cdeit.train.studies.results import RunResult
from cdeit.train.studies.savings import cache_savings, run_images


def _run(name: str, summary: dict, online: bool = False) -> RunResult:
    config = {"student": "deit", "distill": "hard", "online_teacher": online}
    return RunResult(Path(name), "g", name, 0, config, {}, summary, {})


def _pass(images: int, seconds: float) -> dict:
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds, "device": "cpu",
            "device_name": "test cpu", "batch_size": 32, "compute_dtype": "float32"}  # fmt: skip


@pytest.fixture
def measured(tmp_path: Path) -> Path:
    """A cache (no shards yet) whose manifest records a features pass of 500 images/s and a logits pass."""
    cache = tmp_path / "cache"
    cache.mkdir()
    write_manifest(cache, records={"throughput": {"features": _pass(1000, 2.0), "logits": _pass(1000, 0.1)}})
    return cache


def test_the_online_cost_comes_from_the_cache_rate_and_the_images_seen(measured: Path) -> None:
    runs = [_run("a", {"train_images": 6000, "train_seconds": 9.0}),
            _run("b", {"train_images_per_s": 400.0, "train_seconds": 10.0})]  # fmt: skip  # b: an older summary
    assert [run_images(r) for r in runs] == [6000, 4000]
    (line,) = cache_savings({str(measured): runs})
    # 10,000 images at 500 images/s: 20.0 s online, against 2.1 s of precompute
    assert "10,000" in line and "500.0 images/s" in line and "20.0 s" in line and "2.1 s" in line
    assert "+17.9 s" in line and "test cpu" in line and "throughput.features" in line and "train_images" in line


def test_a_cache_without_figures_says_not_recorded(tmp_path: Path) -> None:
    cache = tmp_path / "old"
    cache.mkdir()
    write_manifest(cache)
    for path in (str(cache), str(tmp_path / "missing")):
        (line,) = cache_savings({path: [_run("a", {"train_images": 100})]})
        assert "not recorded" in line and "images/s" in line


def test_online_runs_are_listed_apart(measured: Path) -> None:
    runs = [_run("a", {"train_images": 500}), _run("o", {"train_images": 500, "train_seconds": 7.0}, online=True)]
    cached, online = cache_savings({str(measured): runs})
    assert "reused by 1 run " in cached and "1.0 s" in cached and "7 s" in online
    assert "nothing" in cache_savings({})[0]
