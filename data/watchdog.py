"""A watchdog for FFCV's dataset writer: a writer process that dies becomes one sentence, never a hang.

FFCV's parent process waits in a loop for a sample count that a dead worker (ENOSPC, the OOM killer) never
reaches; `write_watched` runs the write with a thread that follows the workers and ends that wait
(docs/reliability.md, defect 2).
"""

from __future__ import annotations

import _thread
import contextlib
import io
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from cdeit.common.errors import CdeitError


def write_watched(writer: Any, dataset: Any, final: Path, chunksize: int = 1000) -> None:
    """`writer.from_indexed_dataset(dataset)`, but a writer process that dies becomes one sentence, never a hang.

    FFCV's parent waits in a loop for a sample count that a dead worker (ENOSPC, killed by the OOM killer)
    never reaches. A watchdog thread follows the worker processes (each recorded as FFCV starts it, so one that
    dies before the first look is not missed) and, when one exits with an error, signals the main thread until
    FFCV's wait has been broken off (`_Interrupter`); the other workers are stopped, FFCV's shared memory
    released, and the caller's temporary file removed (atomic_path). The workers' own tracebacks go to a buffer,
    not the user's terminal.
    """
    import ffcv.writer

    failed: list[int] = []
    stop = threading.Event()
    started: list[Any] = []  # FFCV's writer processes, each recorded as it starts: none can die unseen
    queues: list[Any] = []  # FFCV's work and allocation queues, released if a worker dies
    interrupter = _Interrupter(failed)

    class Tracked(ffcv.writer.Process):  # multiprocessing.Process, which FFCV's writer imports by name
        def start(self) -> None:
            super().start()
            started.append(self)

    def tracked_queue(*args: Any, **kwargs: Any) -> Any:  # multiprocessing.Queue, which FFCV imports by name
        queue = make_queue(*args, **kwargs)
        queues.append(queue)
        return queue

    def watch() -> None:
        while not failed:
            dead = [p.exitcode for p in list(started) if p.exitcode not in (None, 0)]
            if dead:
                failed.append(dead[0])
            elif stop.wait(0.05):
                return
        while not interrupter.delivered.is_set():  # again and again: one signal can land where it is lost
            interrupter.signal_main()
            if stop.wait(0.1):
                return

    watchdog = threading.Thread(target=watch, daemon=True, name="ffcv-writer-watchdog")
    stderr, sys.stderr = sys.stderr, io.StringIO()  # forked workers inherit this: their tracebacks stay quiet
    process, ffcv.writer.Process = ffcv.writer.Process, Tracked
    make_queue, ffcv.writer.Queue = ffcv.writer.Queue, tracked_queue
    try:
        with interrupter:
            watchdog.start()
            try:
                writer.from_indexed_dataset(dataset, chunksize=chunksize)
            except KeyboardInterrupt:
                if not interrupter.delivered.is_set():
                    raise  # the user's own Ctrl-C
            finally:
                stop.set()
                watchdog.join()  # no signal is sent after this, so none reaches the handler restored below
    finally:
        ffcv.writer.Process = process
        ffcv.writer.Queue = make_queue
        sys.stderr = stderr
    if failed:  # broken off, or a worker died after the wait ended but before the watchdog saw it finish cleanly
        _stop_writer(writer, queues)
        raise _worker_error(final, failed[0])


class _Interrupter:
    """Breaks FFCV's wait in the main thread once a writer process has died: a SIGINT handler for the block that
    raises KeyboardInterrupt only where it cannot be lost.

    The wait is a `sleep(0.1)` loop (and, after it, a blocking queue read) in `DatasetWriter._write_common`. A
    signal is handled wherever the main thread happens to be; raised inside a finaliser (`__del__`, a weakref or
    garbage-collector callback, which run at any point) the KeyboardInterrupt is printed and dropped, and the wait
    went on forever (seen about once in four runs of tests/data/test_watchdog.py). So the handler raises only when
    FFCV's wait itself, or the queue read it called, is what it interrupts, and the watchdog signals every 0.1 s
    until one has been raised (`delivered`). A SIGINT with no dead worker is the user's: it goes to the handler that
    was there before (KeyboardInterrupt where that was none, ignored or default). Only the main thread can install
    a handler; elsewhere the watchdog can only ask `interrupt_main` and the block runs with the handler it has.
    """

    def __init__(self, failed: list[int]):
        self.failed = failed
        self.delivered = threading.Event()
        self.installed = False
        self.previous: Any = None

    def __enter__(self) -> _Interrupter:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self.previous)

    def signal_main(self) -> None:
        if self.installed:  # a real signal: it also ends a blocking read the wait may be in
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        else:
            _thread.interrupt_main(signal.SIGINT)
            self.delivered.set()  # nothing better can be done from here

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.failed:
            if callable(self.previous):
                self.previous(signum, frame)
                return
            raise KeyboardInterrupt
        if self.delivered.is_set() or not _in_ffcv_wait(frame):
            return  # a repeat, or a place where the exception would be lost: the watchdog signals again
        self.delivered.set()
        raise KeyboardInterrupt


_WAIT_HELPERS = ("multiprocessing/queues.py", "multiprocessing/connection.py", "multiprocessing/synchronize.py")


def _in_ffcv_wait(frame: Any) -> bool:
    """Whether `frame` is FFCV's wait loop, or the multiprocessing read it is blocked in (no finaliser between)."""
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_write_common":
            return True
        if code.co_name == "__del__" or not code.co_filename.replace("\\", "/").endswith(_WAIT_HELPERS):
            return False
        frame = frame.f_back
    return False


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
