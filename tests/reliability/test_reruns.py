"""Defect 8 (issue 12): identical inputs on the same machine give byte-identical artefacts.

Each stage runs twice into the same path (the first result moved aside), and every file is compared byte for
byte, except the fields docs/reliability.md lists as time-dependent (measured seconds and images/s).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.reliability.world import CACHE_OPTIONS, TINY, World

# measured, so they differ per run: a run's wall time and rate, and a cache manifest's pass throughput (issue 22)
TIMED = {"train_seconds", "train_images_per_s", "seconds", "images_per_s", "throughput"}


def _twice(out: Path, make) -> tuple[Path, Path]:  # noqa: ANN001
    make(out)
    first = out.with_name(out.name + "-first")
    out.rename(first)
    make(out)
    return first, out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _without_timing(text: bytes, name: str) -> object:
    """A JSON (or JSON lines) file with its measured-time fields removed."""
    rows = [json.loads(line) for line in text.decode().splitlines() if line] if name.endswith(".jsonl") else [
        json.loads(text)]  # fmt: skip
    return [{k: v for k, v in r.items() if k not in TIMED} for r in rows]


def test_precompute_reruns_are_byte_identical(world: World, tmp_path: Path) -> None:
    from cdeit.precompute.config import PrecomputeConfig
    from cdeit.precompute.run import precompute_teacher

    a, b = _twice(tmp_path / "cache", lambda out: precompute_teacher(
        PrecomputeConfig(data=world.data, out=out, device="cpu", **CACHE_OPTIONS)))  # fmt: skip
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    assert {"head.safetensors", "manifest.json"} <= set(fa)
    assert [k for k in fa if k != "manifest.json" and fa[k] != fb[k]] == []
    assert _without_timing(fa["manifest.json"], "manifest.json") == _without_timing(
        fb["manifest.json"], "manifest.json"
    )


@pytest.mark.slow
def test_train_reruns_are_byte_identical(world: World, tmp_path: Path) -> None:
    from cdeit.train.core.config import TrainConfig
    from cdeit.train.core.trainer import train

    def run(out: Path) -> None:
        train(TrainConfig(student="deit", distill="soft", data=str(world.data), teacher_cache=str(world.cache),
                          out=str(out), epochs=1, batch_size=32, eval_batch_size=32, workers=1, device="cpu",
                          model_kwargs=TINY, warmup_epochs=0))  # fmt: skip

    a, b = _twice(tmp_path / "run", run)
    # TensorBoard event files are named and stamped by wall time (docs/reliability.md)
    fa, fb = ({k: v for k, v in _files(r).items() if not k.startswith("tb/")} for r in (a, b))
    assert sorted(fa) == sorted(fb)
    for name in ("model.safetensors", "best.safetensors", "model_config.json", "config.json"):
        assert fa[name] == fb[name], name
    for name in ("summary.json", "metrics.jsonl"):  # equal once the measured seconds and rates are left out
        assert _without_timing(fa[name], name) == _without_timing(fb[name], name), name
    # checkpoints/last.pt holds the same tensors; its State records train_seconds, so its bytes differ (documented)


def test_prepare_reruns_are_byte_identical(world: World, tmp_path: Path) -> None:
    from cdeit.data.prepare import PrepareConfig, prepare

    def run(out: Path) -> None:
        prepare(PrepareConfig(cifar10=world.cifar, out=out, generate=True, per_class_per_type=(2, 1, 1),
                              types=("clean", "brightness", "gaussian_noise"), workers=1))  # fmt: skip

    a, b = _twice(tmp_path / "data", run)
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb) and "manifest.json" in fa
    assert [k for k in fa if fa[k] != fb[k]] == []


def test_safetensors_metadata_order_is_fixed(tmp_path: Path) -> None:
    """safetensors orders metadata by a hash map; cdeit's writer sorts it, so ten saves give one file."""
    import hashlib

    import torch

    from cdeit.common.atomic import write_safetensors

    meta = {f"key{i}": str(i) for i in range(12)}
    digests = set()
    for _ in range(10):
        path = write_safetensors(tmp_path / "t.safetensors", {"w": torch.arange(6.0)}, meta)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == meta and torch.equal(f.get_tensor("w"), torch.arange(6.0))
    shutil.rmtree(tmp_path)
