"""Console output shared by every command: one rich console, progress bars with a rate, clean errors."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cdeit.common.errors import CdeitError

console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)  # results go to stdout, chatter to stderr

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Print a CdeitError as one red sentence and exit 2 instead of showing a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CdeitError as exc:  # escaped: a sentence may name [study] tables or paths with brackets
            from rich.markup import escape

            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            sys.exit(2)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted; finished files are kept, rerun the same command to resume.[/]")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


class RateColumn(TextColumn):
    """Items per second, with the unit the bar counts (images/s, samples/s)."""

    def __init__(self, unit: str):
        super().__init__("")
        self.unit = unit

    def render(self, task: Any) -> Any:
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


@contextlib.contextmanager
def progress_bar(description: str, total: int, unit: str = "images") -> Iterator[Callable[..., None]]:
    """A progress bar that shows count, rate and time left; yields `advance(n, **fields)`."""
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
        disable=not console.is_terminal and not _force_progress(),
    )
    with progress:
        task = progress.add_task(description, total=total, info="")

        def advance(n: int = 1, info: str | None = None) -> None:
            progress.update(task, advance=n, **({"info": info} if info is not None else {}))

        yield advance


def _force_progress() -> bool:
    import os

    return os.environ.get("CDEIT_PROGRESS", "") == "1"
