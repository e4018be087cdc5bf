"""Console output shared by every command: one rich console, progress bars with a rate, clean errors."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cdeit.common.errors import CdeitError

console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)  # results go to stdout, chatter to stderr

F = TypeVar("F", bound=Callable[..., Any])


DEBUG_ENV = "CDEIT_DEBUG"  # =1: let unexpected exceptions through with their traceback


def friendly_errors(fn: F) -> F:
    """Print any failure as one red sentence and exit non-zero instead of showing a traceback.

    A CdeitError is the sentence itself (exit 2); an OSError names its file (exit 2); anything else is a bug or a
    case cdeit does not know yet: one line naming the command and how to see the traceback (exit 1).
    """

    passthrough = _click_exceptions()

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
            _check_stdout()
            return result
        except CdeitError as exc:
            _error(str(exc))
            sys.exit(2)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; finished files are kept, rerun the same command to resume.[/]")
            sys.exit(130)
        except passthrough:
            raise  # typer.Exit(1) and usage errors: click prints and exits as it should
        except OSError as exc:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            _error(os_error_sentence(exc))
            sys.exit(2)
        except Exception as exc:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            _error(
                f"{_command_name()} failed unexpectedly ({type(exc).__name__}: {_first_line(exc)}); "
                f"rerun with {DEBUG_ENV}=1 for the traceback and report it."
            )
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _check_stdout() -> None:
    """A command's results went somewhere: a closed standard output (`>&-`) or one that cannot be flushed is an
    error, not a silent success."""
    if sys.stdout is None or getattr(sys.stdout, "closed", False):
        raise CdeitError("standard output is closed, so the results were not written; run the command with it open.")
    sys.stdout.flush()  # an OSError (EBADF, EPIPE, a full disk) is reported by the handler below


def _error(sentence: str) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(sentence)}", highlight=False)


def _click_exceptions() -> tuple[type[BaseException], ...]:
    """What typer and click raise on purpose (Exit, Abort, usage errors): the handler lets these through.

    Recent typer versions carry their own copy of click (`typer._click`), older ones use click itself.
    """
    import click
    import typer

    kinds = {typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException}
    try:
        from typer._click.exceptions import ClickException
    except ImportError:
        pass
    else:
        kinds.add(ClickException)
    return tuple(kinds)


def _command_name() -> str:
    """`cdeit data prepare` etc. from the command line's context ('cdeit' outside one)."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context
    ctx = get_current_context(silent=True)
    if ctx is None:
        return "cdeit"
    path = ctx.command_path.split(" ", 1)
    return f"`cdeit {path[1]}`" if len(path) == 2 else "`cdeit`"  # the program name differs under test runners


def _first_line(exc: BaseException, limit: int = 200) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else "no message")[:limit]


def os_error_sentence(exc: OSError, path: Any = None, rerun: str = "rerun") -> str:
    """One sentence for a failed read or write: what happened to which file, and what to do."""
    import errno

    where = path if path is not None else (exc.filename or "a file")
    if exc.errno == errno.ENOSPC:
        return f"the disk is full while writing {where}; free space and {rerun}."
    if exc.errno == errno.EROFS:
        return f"{where} is on a read-only file system; choose an output folder you can write to."
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"{where} cannot be accessed ({exc.strerror}); check its permissions or choose a folder you can write."
    if exc.errno == errno.ENOENT:
        return f"{where} does not exist; check the path."
    return f"{where}: {exc.strerror or _first_line(exc)}; check the path and rerun."


class RateColumn(TextColumn):
    """Items per second, with the unit the bar counts (images/s, samples/s)."""

    def __init__(self, unit: str):
        super().__init__("")
        self.unit = unit

    def render(self, task: Any) -> Any:
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


PROGRESS_EVERY_ENV = "CDEIT_PROGRESS_EVERY"  # seconds between progress lines when stderr is not a terminal
PROGRESS_EVERY_S = 60.0


@contextlib.contextmanager
def progress_bar(description: str, total: int, unit: str = "images") -> Iterator[Callable[..., None]]:
    """A progress bar that shows count, rate and time left; yields `advance(n, **fields)`.

    Output to a file (a cluster job's log) gets no bar but one timestamped line every CDEIT_PROGRESS_EVERY
    seconds (60 by default) instead of silence.
    """
    if not console.is_terminal and not _force_progress():
        with _progress_lines(description, total, unit, _every()) as advance:
            yield advance
        return
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str | None = None) -> None:
            progress.update(task, advance=n, **({"info": info} if info is not None else {}))

        yield advance


@contextlib.contextmanager
def _progress_lines(description: str, total: int, unit: str, every: float) -> Iterator[Callable[..., None]]:
    """`advance(n, info)` that prints `TIME description done/total (pct) rate, ETA, info` every `every` seconds."""
    import time

    start = last = time.monotonic()
    done, latest = 0, ""

    def line(now: float) -> None:
        rate = done / max(now - start, 1e-9)
        eta = f", {(total - done) / rate:,.0f} s left" if rate > 0 and total > done else ""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        pct = f" ({done / total:.0%})" if total else ""
        console.print(f"{stamp} {description} {done:,}/{total:,}{pct}, {rate:,.1f} {unit}/s{eta}  {latest}".rstrip())

    def advance(n: int = 1, info: str | None = None) -> None:
        nonlocal done, last, latest
        done += n
        latest = info if info is not None else latest
        now = time.monotonic()
        if now - last >= every:
            last = now
            line(now)

    yield advance
    if time.monotonic() - start >= every:  # a long stage ends with its final count
        line(time.monotonic())


def _every() -> float:
    import os

    try:
        return max(float(os.environ.get(PROGRESS_EVERY_ENV, PROGRESS_EVERY_S)), 0.0)
    except ValueError:
        return PROGRESS_EVERY_S


def _force_progress() -> bool:
    return os.environ.get("CDEIT_PROGRESS", "") == "1"
