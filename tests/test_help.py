"""Every command's `--help` at 80 columns shows every option name whole (issue 23: no `--no-head-standard…`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from cdeit.common.cli import app


def commands(command: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The command path of every leaf command (`('cache', 'verify')`, `('train',)`, ...)."""
    command = command or typer.main.get_command(app)
    subcommands = getattr(command, "commands", None)
    if subcommands is None:
        yield path
        return
    for name, sub in subcommands.items():
        yield from commands(sub, (*path, name))


def test_every_command_is_found() -> None:
    found = set(commands())
    assert {("train",), ("precompute-teacher",), ("cache", "verify"), ("data", "prepare")} <= found


@pytest.mark.parametrize("path", sorted(commands()), ids=" ".join)
def test_help_at_80_columns_cuts_no_option_name(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80  # it did render at 80 columns
    cut = re.findall(r"-[\w-]*…", result.output)
    assert not cut, f"cdeit {' '.join(path)} --help cuts {cut}"
