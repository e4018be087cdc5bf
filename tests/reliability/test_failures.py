"""Defect 6 and the error handler (issue 12): a full disk and an unexpected exception each end in one sentence,
never a traceback; nothing half-written stays (a dying writer process: tests/data/test_watchdog.py)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from cdeit.common.atomic import atomic_path, write_safetensors
from cdeit.common.console import DEBUG_ENV, friendly_errors
from cdeit.common.errors import CdeitError
from tests.reliability.world import World


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
