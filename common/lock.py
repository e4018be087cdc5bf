"""One writer per output folder: an exclusive OS file lock held for the whole command.

`output_lock(folder, command)` creates the folder, takes `fcntl.flock(LOCK_EX | LOCK_NB)` on `folder/.cdeit.lock`
and writes the holder's PID and command into it. The kernel drops the lock when the process dies, so a kill -9
never leaves a stale lock; a second writer gets one sentence naming the first one's PID (a `LockHeld`, which a
caller that should step aside instead, such as a sweep's job, catches). Creating the lock file
is also the probe that the folder is writable, before any work starts. Under torchrun only rank 0 takes it (the
other ranks of the same job write into the folder with it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from cdeit.common.atomic import test_seconds, write_error
from cdeit.common.errors import CdeitError

LOCK_NAME = ".cdeit.lock"
TEST_HOLD_ENV = "CDEIT_TEST_LOCK_HOLD_S"  # tests only: seconds to sleep after taking the lock


class LockHeld(CdeitError):
    """Another process holds the folder's lock; `holder` says who ('PID 123 (cdeit train)')."""

    def __init__(self, folder: Path, holder: str) -> None:
        super().__init__(
            f"{folder} is being written by {holder}; wait for it to finish (or stop it) and rerun, "
            "or choose another output."
        )
        self.folder, self.holder = folder, holder


def _rank() -> int:
    """This process's torchrun rank (a RANK no launcher would set is refused here, before any folder is made)."""
    from cdeit.common.distributed import dist_env

    return dist_env().rank


def _holder(path: Path) -> str:
    """What the lock file says about its holder ('PID 123 (cdeit train)'), or that it is unknown."""
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    pid, _, command = text.partition(" ")
    return f"PID {pid} ({command})" if pid.isdigit() else "another process"


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the exclusive lock on `folder` (created if needed) while the block runs; yields the folder."""
    import fcntl

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CdeitError(f"{folder} is a file, not a folder; choose a folder for the output.")
    if _rank() != 0:
        yield folder
        return
    path, created = folder / LOCK_NAME, not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, fcntl)
    except OSError as exc:
        raise write_error(folder, exc) from None
    if fd is None:
        raise LockHeld(folder, _holder(path))
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command}\n".encode())
        if hold := test_seconds(TEST_HOLD_ENV):  # tests: keep the lock a while first
            import time

            time.sleep(hold)
        yield folder
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # before the release: a waiting process then finds the file gone and retries
        os.close(fd)
        if created:  # a command refused before writing anything leaves no (tree of) empty folders behind
            _remove_empty_tree(folder)


def _acquire(path: Path, fcntl: object) -> int | None:
    """An fd holding the lock on `path`, or None if another process holds it.

    The file is removed when its holder finishes, so after taking the lock check that `path` still names the
    locked file; if it was removed (and maybe recreated) meanwhile, try again on the new file.
    """
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # type: ignore[attr-defined]
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise CdeitError(f"could not lock {path}: it keeps being replaced; check what else writes there.")


def _remove_empty_tree(folder: Path) -> None:
    """Remove `folder` and the folders under it if no file is anywhere inside; leave everything else alone."""
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()  # fails, as it should, on a folder that holds a file
    with contextlib.suppress(OSError):
        folder.rmdir()
