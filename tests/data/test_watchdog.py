"""data.watchdog (defect 2, docs/reliability.md): a dying FFCV writer process is one sentence within seconds, never
a hang, and the temporary file goes with it; also with SIGINT ignored and when a worker dies on its first sample."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from cdeit.common.atomic import atomic_path
from cdeit.common.dataset import INT_FIELDS
from cdeit.common.errors import CdeitError
from cdeit.data.watchdog import write_watched

DIED = r"exit code 3\).*train\.beton"  # the worker's exit code and the file being written


class _DiesAt:
    """An indexed dataset whose writer process exits (as the OOM killer or ENOSPC would end it) at one sample."""

    def __init__(self, n: int, at: int):
        self.n, self.at = n, at

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple:
        if i == self.at:
            os._exit(3)
        return (np.zeros((32, 32, 3), np.uint8), *([0] * len(INT_FIELDS)))


def _write_dying(tmp_path: Path, at: int) -> None:
    """Write 3000 samples with two FFCV workers, one of which dies at sample `at`."""
    import ffcv.writer
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    from cdeit.data.watchdog import QuietBar

    ffcv.writer.tqdm = QuietBar
    fields = {"image": RGBImageField(write_mode="raw")} | {f: IntField() for f in INT_FIELDS}
    final = tmp_path / "train.beton"
    with atomic_path(final) as tmp:
        write_watched(DatasetWriter(str(tmp), fields, num_workers=2), _DiesAt(3000, at), final, chunksize=100)


@pytest.mark.parametrize("at", [1500, 0])  # 0: the worker dies on its first sample, before the watchdog looks
def test_a_dead_ffcv_writer_is_a_sentence_not_a_hang(tmp_path: Path, at: int) -> None:
    start = time.monotonic()
    with pytest.raises(CdeitError, match=DIED):
        _write_dying(tmp_path, at)
    assert time.monotonic() - start < 60
    assert list(tmp_path.iterdir()) == []  # the temporary file went with the failure


def test_a_dead_writer_is_a_sentence_with_sigint_ignored(tmp_path: Path) -> None:
    """A command started in the background by a non-interactive shell inherits SIGINT ignored; the watchdog's
    interrupt must still end FFCV's wait (it hung before), and the ignored disposition is restored after."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        start = time.monotonic()
        with pytest.raises(CdeitError, match=DIED):
            _write_dying(tmp_path, 1500)
        assert time.monotonic() - start < 60
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_process_exits_after_a_writer_dies(tmp_path: Path) -> None:
    """The command's own process ends too: with its workers dead, FFCV's work queue (20,000 one-sample chunks, more
    than a pipe holds) must not keep the interpreter's exit waiting on its feeder thread."""
    import subprocess
    import sys

    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from pathlib import Path
import ffcv.writer
from ffcv.fields import IntField, RGBImageField
from ffcv.writer import DatasetWriter
from cdeit.common.atomic import atomic_path
from cdeit.common.dataset import INT_FIELDS
from cdeit.common.errors import CdeitError
from cdeit.data.watchdog import QuietBar, write_watched
from tests.data.test_watchdog import _DiesAt
ffcv.writer.tqdm = QuietBar
fields = {{"image": RGBImageField(write_mode="raw")}} | {{f: IntField() for f in INT_FIELDS}}
final = Path({str(tmp_path)!r}) / "train.beton"
try:
    with atomic_path(final) as tmp:
        write_watched(DatasetWriter(str(tmp), fields, num_workers=2), _DiesAt(20000, 0), final, chunksize=1)
except CdeitError:
    sys.exit(7)
"""
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True, text=True)
    assert proc.returncode == 7, proc.stderr[-2000:]


def test_the_interrupt_is_raised_only_where_it_cannot_be_lost() -> None:
    """A KeyboardInterrupt raised in a finaliser is printed and dropped by Python, and FFCV's wait went on forever:
    the handler raises only in FFCV's wait itself (here a function of that name), never in a `__del__` it calls."""
    import sys

    from cdeit.data.watchdog import _in_ffcv_wait

    class Finalised:
        def __del__(self) -> None:
            seen.append(_in_ffcv_wait(sys._getframe()))

    def _write_common() -> None:  # FFCV's DatasetWriter method of this name
        seen.append(_in_ffcv_wait(sys._getframe()))
        Finalised()  # collected at once: its __del__ runs with this frame below it

    seen: list[bool] = []
    _write_common()
    assert seen == [True, False]
    assert not _in_ffcv_wait(sys._getframe())  # anywhere else
