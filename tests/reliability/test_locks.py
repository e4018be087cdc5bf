"""Defect 5 (issue 12): one writer per folder. A second writer of any command gets one sentence naming the
first one's PID (the first writer is a small process holding the folder's lock as a command does; one real
two-process race shows a first writer finishing its work meanwhile); the lock dies with its process (kill -9
leaves nothing stale); temp files of live processes are never removed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cdeit.common.atomic import remove_stale_tmp
from cdeit.common.lock import LOCK_NAME, TEST_HOLD_ENV, output_lock
from tests.reliability.runner import Case, run_case
from tests.reliability.world import CACHE_ARGS, TRAIN_ARGS, World

REPO = Path(__file__).resolve().parents[2]
CDEIT = [sys.executable, "-c", "from cdeit.common.cli import main; main()"]


def _commands(w: World, d: Path) -> dict[str, tuple[list, Path]]:
    """Per writing command: its command line and the folder it locks."""
    dl = ["--retries", "0", "--timeout", "1", "--cifar10-url", "http://127.0.0.1:9/x.tar.gz", "--only", "cifar10"]
    return {
        "prepare": (["data", "prepare", "--cifar10", w.cifar, "--out", d / "out", "--corruptions", "generate",
                     "--per-class-per-type", "2,1,1", "--types", "clean", "--workers", "1"], d / "out"),
        "precompute": (["precompute-teacher", "--data", w.data, "--out", d / "out", *CACHE_ARGS], d / "out"),
        "merge": (["cache", "merge", w.cache, "--out", d / "out"], d / "out"),
        "train": (["train", "--data", w.data, "--out", d / "out", *TRAIN_ARGS], d / "out"),
        "evaluate": (["evaluate", d / "run", "--device", "cpu", "--batch-size", "32", "--workers", "1"],
                     d / "run" / "eval"),
        "export": (["export", w.run, "--to", d / "out" / "m.safetensors"], d / "out"),
        "download": (["data", "download", "--to", d / "out", *dl], d / "out"),
    }  # fmt: skip


def _wait_for_lock(folder: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lock = folder / LOCK_NAME
        if lock.is_file() and lock.read_text().startswith(f"{proc.pid} "):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the first writer ended before taking the lock: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("the first writer never took the lock")


@contextlib.contextmanager
def _holder(folder: Path) -> Iterator[subprocess.Popen]:
    """Another process holding `folder`'s lock exactly as a first writer does (common.lock.output_lock)."""
    code = f"import sys\nfrom cdeit.common.lock import output_lock\nwith output_lock({str(folder)!r}, 'cdeit holder'):\n    print('held', flush=True)\n    sys.stdin.read()\n"  # noqa: E501
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.communicate(timeout=60)  # closing stdin lets it finish and release the lock
    assert proc.returncode == 0


@pytest.mark.parametrize("command", ["prepare", "precompute", "merge", "train", "evaluate", "export", "download"])
def test_second_writer_is_refused_with_the_first_ones_pid(world: World, tmp_path: Path, command: str) -> None:
    """Every writing command takes its output folder's lock before any work: while another process holds it, the
    command exits 2 with one sentence naming the folder and the holder's PID, and writes nothing there."""
    if command == "evaluate":
        shutil.copytree(world.run, tmp_path / "run")
    argv, folder = _commands(world, tmp_path)[command]
    with _holder(folder) as holder:
        second = Case(f"race/{command}", lambda w, d: argv, lambda w, d: [folder, f"PID {holder.pid}"])
        outcome = run_case(second, world, tmp_path / "second")
        assert outcome.ok, outcome.output
        assert outcome.exit_code == 2
        assert (folder / LOCK_NAME).read_text().startswith(f"{holder.pid} ")  # the holder's lock is untouched
        assert [p.name for p in folder.iterdir()] == [LOCK_NAME]  # and nothing else was written into its folder
    assert not (folder / LOCK_NAME).exists()


def test_a_real_first_writer_finishes_while_a_second_is_refused(world: World, tmp_path: Path) -> None:
    """One real two-process race: `cdeit export` holding the lock (a few seconds, by the tests' hold variable)
    refuses a second export naming its PID, then finishes its own work (exit 0, the model written) and removes
    the lock file."""
    argv, folder = _commands(world, tmp_path)["export"]
    env = dict(os.environ, **{TEST_HOLD_ENV: "2"})
    first = subprocess.Popen([*CDEIT, *map(str, argv)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        _wait_for_lock(folder, first)
        second = Case("race/export", lambda w, d: argv, lambda w, d: [folder, f"PID {first.pid}"], unchanged=False)
        outcome = run_case(second, world, tmp_path / "second")
        assert outcome.ok, outcome.output
        assert outcome.exit_code == 2
    finally:
        output, _ = first.communicate(timeout=300)
    assert first.returncode == 0, output
    assert (folder / "m.safetensors").is_file()
    assert not (folder / LOCK_NAME).exists()


def test_lock_dies_with_a_killed_process(tmp_path: Path) -> None:
    code = f"from cdeit.common.lock import output_lock\nwith output_lock({str(tmp_path)!r}, 'x'):\n    print('held', flush=True)\n    import time; time.sleep(60)\n"  # noqa: E501
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    from cdeit.common.errors import CdeitError

    with pytest.raises(CdeitError, match=f"PID {proc.pid}"), output_lock(tmp_path, "second"):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # the file stays after kill -9, but the lock is gone with the process
    with output_lock(tmp_path, "third"):
        assert (tmp_path / LOCK_NAME).read_text().startswith(f"{os.getpid()} third")
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_refused_command_leaves_no_folder(tmp_path: Path) -> None:
    from cdeit.common.errors import CdeitError

    with pytest.raises(CdeitError, match="bad"), output_lock(tmp_path / "new" / "deeper", "x"):
        (tmp_path / "new" / "deeper" / "empty-sub").mkdir()
        raise CdeitError("bad")
    assert not (tmp_path / "new" / "deeper").exists()


def test_remove_stale_tmp_spares_live_processes(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live_tmp = tmp_path / f".train.beton.tmp-{sleeper.pid}"
        mine = tmp_path / f".val.beton.tmp-{os.getpid()}"
        stale = tmp_path / f".test.beton.tmp-{dead.pid}"
        for p in (live_tmp, mine, stale):
            p.write_bytes(b"x")
        assert remove_stale_tmp(tmp_path) == [stale]
        assert live_tmp.exists() and mine.exists() and not stale.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
