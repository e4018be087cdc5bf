"""Run one bad-input case through the real command line and classify what a user would have seen.

Outcomes: `sentence` (non-zero exit, no traceback, one error line naming the file or option), `traceback`
(an exception escaped or a traceback was printed), `silent` (exit 0: a bad input ran to a result), `hang`
(no answer within the case's time limit), `unexpected` (the handler's one line for an exception cdeit did not
anticipate: no traceback, but no sentence either), `vague` (non-zero, but the message does not name what is wrong or
says it in several error lines). Half-written output (new `.tmp-` files, or any change to the case folder for
a refusal) is reported separately.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.reliability.world import World

TRACEBACK = "Traceback (most recent call last)"
USAGE_MARKERS = ("Invalid value", "Missing option", "No such option", "Missing argument", "Got unexpected extra")


@dataclass
class Case:
    """One bad input: `argv(world, case_dir)` gives the command line; `names` must all appear in the message."""

    id: str
    argv: Callable[[World, Path], list[str]]
    names: Callable[[World, Path], list[str]]
    setup: Callable[[World, Path], Any] | None = None  # prepares inputs in case_dir; may return a context manager
    needs: str = ""  # 'readonly' | 'full': skipped without that mount
    unchanged: bool = True  # a refusal: the case folder must look exactly as before
    timeout_s: int = 120
    xfail: str = ""  # reason, for a defect another branch fixes (strict: flips when it lands)
    marks: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class Outcome:
    kind: str  # sentence | traceback | silent | hang | vague
    exit_code: int | None
    output: str
    half_written: list[str]

    @property
    def ok(self) -> bool:
        return self.kind == "sentence" and not self.half_written


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise _Hang()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and mtime (what 'nothing half-written' compares)."""
    if not folder.exists():
        return {}
    out = {}
    for p in sorted(folder.rglob("*")):
        with contextlib.suppress(OSError):
            st = p.lstat()
            is_file = p.is_file()  # a folder's mtime changes when a lock file comes and goes: compare files only
            out[p.relative_to(folder).as_posix()] = (st.st_size, st.st_mtime_ns) if is_file else (-1, 0)
    return out


def run_case(case: Case, world: World, case_dir: Path) -> Outcome:
    """Set the case up in `case_dir`, run it with typer's CliRunner, classify the result."""
    from typer.testing import CliRunner

    from cdeit.common.cli import app

    case_dir.mkdir(parents=True, exist_ok=True)
    held = case.setup(world, case_dir) if case.setup else None
    with held if isinstance(held, contextlib.AbstractContextManager) else contextlib.nullcontext():
        before = snapshot(case_dir)
        argv = [str(a) for a in case.argv(world, case_dir)]
        try:
            with _time_limit(case.timeout_s):
                result = CliRunner().invoke(app, argv, catch_exceptions=True)
        except _Hang:
            return Outcome("hang", None, "", [])
        after = snapshot(case_dir)
    output = result.output + (result.stderr if result.stderr_bytes is not None and result.stderr not in result.output
                              else "")  # fmt: skip
    half = sorted(k for k in after if ".tmp-" in k or (k.endswith(".cdeit.lock") and k not in before))
    if case.unchanged:
        half += sorted({k for k in after if k not in before or after[k] != before[k]} - set(half))
        half += sorted(k + " (removed)" for k in before if k not in after)
    return Outcome(_classify(result, output, case.names(world, case_dir)), result.exit_code, output, half)


def _classify(result: Any, output: str, names: list[str]) -> str:
    if isinstance(result.exception, _Hang):
        return "hang"
    if TRACEBACK in output or (result.exception is not None and not isinstance(result.exception, SystemExit)):
        return "traceback"
    if result.exit_code == 0:
        return "silent"
    if "failed unexpectedly" in output:  # the handler's one line for an exception cdeit did not anticipate
        return "unexpected"
    flat = " ".join(output.split())  # rich may wrap a long sentence over lines
    if not all(" ".join(str(n).split()) in flat for n in names):
        return "vague"
    errors = [ln for ln in output.splitlines() if ln.startswith("error:")]
    if len(errors) > 1:
        return "vague"
    return "sentence"


def describe(outcome: Outcome) -> str:
    text = outcome.output.strip()[-1500:]
    return f"{outcome.kind} (exit {outcome.exit_code}); half-written: {outcome.half_written}\n{text}"
