"""`precompute-teacher` end to end on the tiny dataset: round trip, resume after SIGKILL, slices, refusals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from cdeit.common.cache import (
    FEATURES_DIR,
    HEAD_FILE,
    TEST_PAUSE_ENV,
    load_teacher_logits,
    merge_caches,
    read_arrays,
    read_cache_manifest,
    verify_cache,
)
from cdeit.common.dataset import read_split
from cdeit.common.errors import CdeitError
from cdeit.common.head import LinearHead
from cdeit.precompute.run import precompute_teacher
from tests.precompute.helpers import CLI_ARGS, config

REPO = Path(__file__).resolve().parents[2]
Reference = tuple[Path, dict[str, Any]]


def shard_sums(cache: Path) -> dict[str, str]:
    return {e["file"]: e["sha256"] for e in read_cache_manifest(cache)["shards"]}


def assert_same_cache(cache: Path, reference: Path) -> None:
    """Same shard files, byte for byte, and the same head."""
    assert shard_sums(cache) == shard_sums(reference)
    assert read_cache_manifest(cache)["head"]["hash"] == read_cache_manifest(reference)["head"]["hash"]
    assert verify_cache(cache) == []


def test_round_trip(reference: Reference, tiny_dataset: Path) -> None:
    cache, summary = reference
    manifest = read_cache_manifest(cache)
    assert summary["complete"] and summary["images"] == 440 and summary["images_per_s"] > 0
    assert manifest["provenance"]["random_weights"] is True and manifest["provenance"]["input_size"] == [160, 160]
    assert len(manifest["shards"]) == 8 and not (cache / FEATURES_DIR).exists()
    assert verify_cache(cache, tiny_dataset) == []
    head = LinearHead(*_head_tensors(cache))
    assert head.hash == manifest["head"]["hash"] == manifest["provenance"]["head_hash"]
    for split in ("train", "val", "test"):
        logits = load_teacher_logits(cache, tiny_dataset, split)
        features = np.concatenate(
            [read_arrays(cache / e["file"])["features"] for e in manifest["shards"] if e["split"] == split]
        )
        assert features.dtype == np.float16 and torch.equal(logits, torch.from_numpy(head.logits(features)))
        labels = read_split(tiny_dataset / f"{split}.beton", fields=("label",))["label"]
        accuracy = float((logits.argmax(1).numpy() == labels).mean())
        assert manifest["splits"][split]["accuracy"] == pytest.approx(accuracy)


def _head_tensors(cache: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = load_file(str(cache / HEAD_FILE))
    return tensors["weight"], tensors["bias"]


def test_rerun_resumes_with_nothing_to_do(reference: Reference, tiny_dataset: Path, tmp_path: Path) -> None:
    cache = Path(shutil.copytree(reference[0], tmp_path / "cache"))
    summary = precompute_teacher(config(tiny_dataset, cache))
    assert summary["images"] == 0 and summary["complete"]
    assert_same_cache(cache, reference[0])


def test_refuses_a_cache_of_another_teacher(reference: Reference, tiny_dataset: Path, tmp_path: Path) -> None:
    cache = Path(shutil.copytree(reference[0], tmp_path / "cache"))
    with pytest.raises(CdeitError, match="holds a cache with weights_hash"):
        precompute_teacher(config(tiny_dataset, cache, seed=1))  # other random weights
    with pytest.raises(CdeitError, match="store_features=True"):
        precompute_teacher(config(tiny_dataset, cache, store_features=False))
    with pytest.raises(CdeitError, match="head with other settings"):
        precompute_teacher(config(tiny_dataset, cache, head_epochs=4))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CdeitError, match="not empty and holds no teacher cache"):
        precompute_teacher(config(tiny_dataset, tmp_path / "other"))


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_cache(reference: Reference, tiny_dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cli = [sys.executable, "-m", "cdeit.common.cli"]
    cmd = [*cli, "precompute-teacher", "--data", str(tiny_dataset), "--out", str(cache)]
    env = os.environ | {TEST_PAUSE_ENV: "0.4"}  # each finished shard waits 0.4 s under its temporary name
    with open(tmp_path / "log.txt", "wb") as log:
        proc = subprocess.Popen([*cmd, *CLI_ARGS], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        _wait_for(lambda: any((cache / FEATURES_DIR).glob("*.h5")), proc, tmp_path / "log.txt")
        time.sleep(0.2)  # the next shard is being written
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = [len(read_arrays(p, ("index",))["index"]) for p in (cache / FEATURES_DIR).glob("*.h5")]
    assert 1 <= len(done) < 8 and not (cache / HEAD_FILE).exists()
    assert not read_cache_manifest(cache)["complete"]
    summary = precompute_teacher(config(tiny_dataset, cache))
    assert summary["images"] == 440 - sum(done)
    assert not list(cache.rglob(".*tmp*"))
    assert_same_cache(cache, reference[0])


def _wait_for(ready: Any, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the precompute subprocess did not write a shard in time:\n{log.read_text()[-2000:]}")
        time.sleep(0.02)


def test_feature_slices_merged_then_finished_equal_a_full_run(
    reference: Reference, tiny_dataset: Path, tmp_path: Path
) -> None:
    slices = [tmp_path / f"slice{i}" for i in range(2)]
    images = 0
    for i, out in enumerate(slices):
        summary = precompute_teacher(config(tiny_dataset, out, shard_index=i, num_shards=2))
        images += summary["images"]
        assert not summary["complete"] and not (out / HEAD_FILE).exists()
        assert len(read_cache_manifest(out)["feature_shards"]) == 4
    assert images == 440
    merged = tmp_path / "merged"
    merge_caches(slices, merged)
    parts = [read_cache_manifest(s)["throughput"]["features"] for s in slices]
    joined = read_cache_manifest(merged)["throughput"]["features"]  # the slices' figures, added up
    assert joined["images"] == 440 and joined["seconds"] == pytest.approx(sum(p["seconds"] for p in parts))
    assert joined["images_per_s"] == pytest.approx(440 / joined["seconds"])
    summary = precompute_teacher(config(tiny_dataset, merged))  # fits the head and writes the logits, no forward
    assert summary["images"] == 0 and summary["complete"]
    assert_same_cache(merged, reference[0])


def test_slices_with_a_given_head_merge_into_the_full_run(
    reference: Reference, tiny_dataset: Path, tmp_path: Path
) -> None:
    head = shutil.copy(reference[0] / HEAD_FILE, tmp_path / "head.safetensors")
    slices = [tmp_path / f"slice{i}" for i in range(2)]
    for i, out in enumerate(slices):
        precompute_teacher(config(tiny_dataset, out, shard_index=i, num_shards=2, head=str(head)))
        assert len(read_cache_manifest(out)["shards"]) == 4 and not (out / FEATURES_DIR).exists()
    manifest = merge_caches(slices, tmp_path / "merged")
    assert manifest["complete"]
    assert_same_cache(tmp_path / "merged", reference[0])
    assert read_cache_manifest(tmp_path / "merged")["head"]["source"] == "fitted"  # the head file travels as is


def test_checks_options_before_computing(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(CdeitError, match="not a multiple of --batch-size 48"):
        precompute_teacher(config(tiny_dataset, tmp_path / "a", batch_size=48))
    with pytest.raises(CdeitError, match="needs the train and val splits"):
        precompute_teacher(config(tiny_dataset, tmp_path / "a", splits=("train", "test")))
    with pytest.raises(CdeitError, match="has no split 'extra'"):
        precompute_teacher(config(tiny_dataset, tmp_path / "a", splits=("train", "val", "extra")))
    with pytest.raises(CdeitError, match="--shard-index must be in 0..1"):
        precompute_teacher(config(tiny_dataset, tmp_path / "a", shard_index=2, num_shards=2))
    with pytest.raises(CdeitError, match="has 1000 outputs for a dataset of 10 classes"):
        precompute_teacher(config(tiny_dataset, tmp_path / "a", head="none"))
    assert not (tmp_path / "a").exists()


def test_cli_turns_a_mistake_into_one_red_sentence(tiny_dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cdeit.common.cli import app

    args = ["precompute-teacher", "--data", str(tiny_dataset), "--out", str(tmp_path / "c"), *CLI_ARGS]
    result = CliRunner().invoke(app, [*args, "--batch-size", "48"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "error: --shard-size 64 is not a multiple of --batch-size 48" in " ".join(result.output.split())
