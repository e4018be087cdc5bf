"""Defects 2, 6 and the error handler (issue 12): a dying writer process, a full disk and an unexpected
exception each end in one sentence, never a hang or a traceback; nothing half-written stays."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from cdeit.common.atomic import atomic_path, write_safetensors
from cdeit.common.console import DEBUG_ENV, friendly_errors
from cdeit.common.dataset import INT_FIELDS, write_watched
from cdeit.common.errors import CdeitError
from tests.reliability.world import World


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


@pytest.mark.parametrize("at", [1500, 0])  # 0: the worker dies on its first sample, before the watchdog looks
def test_a_dead_ffcv_writer_is_a_sentence_not_a_hang(tmp_path: Path, at: int) -> None:
    import ffcv.writer
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    from cdeit.common.dataset import _QuietBar

    ffcv.writer.tqdm = _QuietBar
    fields = {"image": RGBImageField(write_mode="raw")} | {f: IntField() for f in INT_FIELDS}
    final = tmp_path / "train.beton"
    start = time.monotonic()
    died = r"FFCV writer process died \(exit code 3\) while writing .*train.beton"
    with pytest.raises(CdeitError, match=died), atomic_path(final) as tmp:
        write_watched(DatasetWriter(str(tmp), fields, num_workers=2), _DiesAt(3000, at), final, chunksize=100)
    assert time.monotonic() - start < 60
    assert list(tmp_path.iterdir()) == []  # the temporary file went with the failure


def test_a_dead_writer_is_a_sentence_with_sigint_ignored(tmp_path: Path) -> None:
    """A command started in the background by a non-interactive shell inherits SIGINT ignored; the watchdog's
    interrupt must still end FFCV's wait (it hung before), and the ignored disposition is restored after."""
    import signal

    import ffcv.writer
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    from cdeit.common.dataset import _QuietBar

    ffcv.writer.tqdm = _QuietBar
    fields = {"image": RGBImageField(write_mode="raw")} | {f: IntField() for f in INT_FIELDS}
    final = tmp_path / "train.beton"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        start = time.monotonic()
        with pytest.raises(CdeitError, match=r"FFCV writer process died \(exit code 3\)"), atomic_path(final) as tmp:
            write_watched(DatasetWriter(str(tmp), fields, num_workers=2), _DiesAt(3000, 1500), final, chunksize=100)
        assert time.monotonic() - start < 60
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_full_disk_writes_name_the_file(world: World) -> None:
    if world.full is None:
        pytest.skip("needs a small tmpfs (root)")
    import torch

    big = {"w": torch.zeros(64, 1024)}  # 256 KiB: more than the 16 KiB file system holds
    with pytest.raises(CdeitError, match=r"disk is full while writing .*model.safetensors"):
        write_safetensors(world.full / "model.safetensors", big, {"format": "pt"})
    with (
        pytest.raises(CdeitError, match=r"disk is full while writing .*last.pt"),
        atomic_path(world.full / "last.pt") as tmp,
    ):
        torch.save(big, tmp)
    with (
        pytest.raises(CdeitError, match=r"disk is full while writing .*notes.txt"),
        atomic_path(world.full / "notes.txt") as tmp,
    ):
        tmp.write_bytes(b"x" * (1 << 20))
    assert list(world.full.iterdir()) == []


def _app(fn: object) -> typer.Typer:
    app = typer.Typer()
    app.command("boom")(friendly_errors(fn))  # type: ignore[arg-type]
    app.command("other")(lambda: None)  # two commands: a group, as the cdeit app
    return app


def test_unexpected_exception_is_one_line_naming_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise ZeroDivisionError("division by zero")

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    result = CliRunner().invoke(_app(boom), ["boom"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "`cdeit boom`" in lines[0] and "ZeroDivisionError" in lines[0]
    assert f"{DEBUG_ENV}=1" in lines[0]
    monkeypatch.setenv(DEBUG_ENV, "1")
    result = CliRunner().invoke(_app(boom), ["boom"])
    assert isinstance(result.exception, ZeroDivisionError)  # the traceback comes through


def test_os_errors_name_their_file() -> None:
    def missing() -> None:
        open("/nonexistent/cdeit/file.txt")  # noqa: SIM115

    result = CliRunner().invoke(_app(missing), ["boom"])
    assert result.exit_code == 2 and "/nonexistent/cdeit/file.txt" in result.output and "Traceback" not in result.output


def test_typer_exit_passes_through() -> None:
    def exits() -> None:
        raise typer.Exit(1)

    result = CliRunner().invoke(_app(exits), ["boom"])
    assert result.exit_code == 1 and result.output == ""
