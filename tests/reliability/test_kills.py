"""kill -9 at stage boundaries and in the middle of a write, for prepare, precompute, train and merge: the
rerun (train: --resume) finishes, leaves no temporary file, and its artefacts equal an uninterrupted run's byte
for byte (except the measured seconds and rates of train's summary.json / metrics.jsonl and its last.pt,
docs/reliability.md).

The kill comes from the product's own test hook (CDEIT_TEST_KILL, common/atomic.py): SIGKILL just before or
just after the N-th rename of a file matching a pattern, so each case hits its boundary exactly.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cdeit.common.atomic import KILL_ENV
from cdeit.common.cli import run_command
from tests.reliability.test_reruns import _files, _without_timing
from tests.reliability.world import CACHE_ARGS, TRAIN_ARGS, World

REPO = Path(__file__).resolve().parents[2]
CDEIT = [sys.executable, "-c", "from cdeit.common.cli import main; main()"]

PREPARE = ["data", "prepare", "--corruptions", "generate", "--per-class-per-type", "2,1,1", "--types",
           "clean,brightness", "--workers", "1"]  # fmt: skip
TRAIN = [*TRAIN_ARGS, "--epochs", "2", "--student", "deit", "--distill", "soft"]  # repeated options: the last wins

# (command, kill point): a boundary ('after' a file is complete) or mid-write ('before' its rename, leaving a temp
# file). One point per distinct resume path of each command (issue 21 merged the points that resume the same way):
# prepare: a finished split reused while a half-written one is replaced; every beton finished, the manifest not.
# precompute: after the first feature shard (the feature pass resumes); after the head (its fit is skipped);
#   mid-write of a final logits shard ('#2': the second rename of that name).
# train: mid-write of epoch 2's checkpoint (resume from epoch 1); training done, the model file not.
# merge: mid-copy of a shard with an earlier one copied; every shard copied, the manifest not.
POINTS = {
    "prepare": ["before:val.beton", "before:manifest.json"],
    "precompute": ["after:train-00000.h5", "after:head.safetensors", "before:train-00001.h5#2"],
    "train": ["before:last.pt#2", "before:model.safetensors"],
    "merge": ["before:val-00000.h5", "before:manifest.json"],
}  # fmt: skip


def _argv(command: str, w: World, out: Path) -> list[str]:
    return {
        "prepare": [*PREPARE, "--cifar10", w.cifar, "--out", out],
        "precompute": ["precompute-teacher", "--data", w.data, "--out", out, *CACHE_ARGS],
        "train": ["train", "--data", w.data, "--teacher-cache", w.cache, "--out", out, *TRAIN],
        "merge": ["cache", "merge", w.cache, "--out", out],
    }[command]


@pytest.fixture(scope="module")
def references(world: World, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, bytes]]]:
    """Each command's uninterrupted output, run at the very path the killed runs use (ROOT/command), moved aside."""
    root, refs = tmp_path_factory.mktemp("kills"), {}
    for command in POINTS:
        out = root / command
        assert run_command([str(a) for a in _argv(command, world, out)]) == 0
        refs[command] = _files(out)
        out.rename(root / f"{command}-reference")
    return root, refs


def _params() -> list:
    return [pytest.param(c, p, id=f"{c}-{p}") for c, points in POINTS.items() for p in points]


@pytest.mark.slow
@pytest.mark.parametrize(("command", "point"), _params())
def test_kill_then_rerun_gives_the_same_bytes(
    command: str, point: str, world: World, references: tuple[Path, dict[str, dict[str, bytes]]]
) -> None:
    root, refs = references
    out = root / command
    argv = [str(a) for a in _argv(command, world, out)]
    proc = subprocess.run([*CDEIT, *argv], cwd=REPO, env=os.environ | {KILL_ENV: point}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    rerun = ["train", "--resume", str(out)] if command == "train" else argv
    try:
        assert run_command(rerun) == 0
        got, want = _files(out), refs[command]
        if command == "train":  # TensorBoard event files are named and stamped by wall time (documented)
            got, want = ({k: v for k, v in f.items() if not k.startswith("tb/")} for f in (got, want))
        assert not [k for k in got if ".tmp-" in k]
        assert sorted(got) == sorted(want)
        # environment.json adds one entry per resume (issue 16), by design
        exceptions = (
            {"summary.json", "metrics.jsonl", "checkpoints/last.pt", "environment.json"}
            if command == "train"
            else {"manifest.json"}  # a cache records its passes' measured throughput (issue 22); datasets none
            if command == "precompute"
            else set()
        )
        assert [k for k in want if k not in exceptions and got[k] != want[k]] == []
        for name in exceptions - {"checkpoints/last.pt", "environment.json"}:
            assert _without_timing(got[name], name) == _without_timing(want[name], name), name
    finally:
        shutil.rmtree(out, ignore_errors=True)
