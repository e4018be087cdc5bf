"""A watchdog for FFCV's dataset writer: a writer process that dies becomes one sentence, never a hang.

FFCV's parent process waits in a loop for a sample count that a dead worker (ENOSPC, the OOM killer) never
reaches; `write_watched` runs the write with a thread that follows the workers and ends that wait
(docs/reliability.md, defect 2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cdeit.common.errors import CdeitError


def write_watched(writer: Any, dataset: Any, final: Path, chunksize: int = 1000) -> None:
    """`writer.from_indexed_dataset(dataset)`, but a writer process that dies becomes one sentence, never a hang.

    FFCV's parent waits in a loop for a sample count that a dead worker (ENOSPC, killed by the OOM killer)
    never reaches. A watchdog thread follows the worker processes (each recorded as FFCV starts it, so one that
    dies before the first look is not missed) and interrupts the wait when one exits with an error; the other
    workers are stopped, FFCV's shared memory released, and the caller's temporary file removed (atomic_path).
    The workers' own tracebacks go to a buffer, not the user's terminal.
    """
    import _thread
    import io
    import signal
    import sys
    import threading

    import ffcv.writer

    failed: list[int] = []
    stop = threading.Event()
    started: list[Any] = []  # FFCV's writer processes, each recorded as it starts: none can die unseen
    queues: list[Any] = []  # FFCV's work and allocation queues, released if a worker dies

    class Tracked(ffcv.writer.Process):  # multiprocessing.Process, which FFCV's writer imports by name
        def start(self) -> None:
            super().start()
            started.append(self)

    def tracked_queue(*args: Any, **kwargs: Any) -> Any:  # multiprocessing.Queue, which FFCV imports by name
        queue = make_queue(*args, **kwargs)
        queues.append(queue)
        return queue

    def watch() -> None:
        while True:
            dead = [p.exitcode for p in list(started) if p.exitcode not in (None, 0)]
            if dead:
                failed.append(dead[0])
                _thread.interrupt_main(signal.SIGINT)
                return
            if stop.wait(0.05):
                return

    watchdog = threading.Thread(target=watch, daemon=True, name="ffcv-writer-watchdog")
    stderr, sys.stderr = sys.stderr, io.StringIO()  # forked workers inherit this: their tracebacks stay quiet
    interruptible = _sigint_handled()
    process, ffcv.writer.Process = ffcv.writer.Process, Tracked
    make_queue, ffcv.writer.Queue = ffcv.writer.Queue, tracked_queue
    watchdog.start()
    try:
        with interruptible:
            writer.from_indexed_dataset(dataset, chunksize=chunksize)
    except KeyboardInterrupt:
        if not failed:
            raise
        _stop_writer(writer, queues)
        raise _worker_error(final, failed[0]) from None
    finally:
        ffcv.writer.Process = process
        ffcv.writer.Queue = make_queue
        stop.set()
        watchdog.join()
        sys.stderr = stderr
    if failed:  # a worker died after the wait ended but before the watchdog saw it finish cleanly
        _stop_writer(writer, queues)
        raise _worker_error(final, failed[0])


@contextlib.contextmanager
def _sigint_handled() -> Iterator[None]:
    """Python's SIGINT handler for the block, so the watchdog's `interrupt_main` reaches the main thread.

    `interrupt_main` does nothing while SIGINT is ignored, as it is in a command started in the background by a
    non-interactive shell (`cdeit data prepare ... &` in a script): the wait would never end. Only the main thread
    can install a handler; elsewhere the block runs unchanged.
    """
    import signal
    import threading

    previous = signal.getsignal(signal.SIGINT)
    if callable(previous) or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_writer(writer: Any, queues: list[Any]) -> None:
    """Terminate FFCV's remaining writer processes, release its queues and free its shared metadata block.

    The parent filled the work queue through a feeder thread; with its readers dead, that thread would block on a
    full pipe and the interpreter's exit would wait for it forever, so each queue's join at exit is cancelled.
    """
    import multiprocessing

    for p in multiprocessing.active_children():
        p.terminate()
        p.join(5)
    for queue in queues:
        queue.cancel_join_thread()
        queue.close()
    with contextlib.suppress(Exception):
        writer.metadata_sm.close()
        writer.metadata_sm.unlink()


def _worker_error(final: Path, exitcode: int) -> CdeitError:
    import shutil

    try:
        full = shutil.disk_usage(final.parent).free < (64 << 20)
    except OSError:
        full = False
    if full:
        return CdeitError(f"the disk is full while writing {final}; free space (or choose another --out) and rerun.")
    return CdeitError(
        f"an FFCV writer process died (exit code {exitcode}) while writing {final}; nothing was kept. "
        "Check free memory and disk, then rerun the same command."
    )


class QuietBar:
    """A silent stand-in for the tqdm bar FFCV's writer prints (the caller shows its own progress)."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass
