"""The root `cdeit` app: composes the commands each stage registers, without importing any stage.

Every stage owns its commands (`data/cli.py`, `precompute/cli.py`, `train/cli.py`) and declares a
`register(app)` function under the `cdeit.commands` entry-point group in pyproject.toml; this module loads
them in the pipeline's order. `common` therefore never imports a stage, and `cdeit --help` stays fast:
the stage modules import torch only inside the commands that need it.
"""

from __future__ import annotations

import os

# torch's OpenMP threads spin after each parallel region by default; beside FFCV's loader threads on a
# small CPU that halves training throughput (measured: 22 vs 38 images/s on 2 cores). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from importlib.metadata import distributions  # noqa: E402

import typer  # noqa: E402

from cdeit.common import __version__  # noqa: E402

ENTRY_POINT_GROUP = "cdeit.commands"
ORDER = ("data", "precompute", "train", "demo")  # the pipeline's order in `cdeit --help`

app = typer.Typer(
    name="cdeit",
    help="Teacher-logit cache and fast student trainer for vision transformers on corrupted images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_stages(root: typer.Typer) -> list[str]:
    """Call each `cdeit.commands` entry point's `register(root)`, in pipeline order; returns their names."""
    found = {}  # every installed metadata copy counts: a stale cdeit.egg-info in the working directory has none
    for dist in distributions():
        for ep in dist.entry_points.select(group=ENTRY_POINT_GROUP):
            found.setdefault(ep.name, ep)
    if not found:
        raise SystemExit(
            "cdeit: no commands are registered (the `cdeit.commands` entry points are missing); "
            "reinstall the project with `bash setup.sh` or `pip install -e .`."
        )
    names = sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    for name in names:
        found[name].load()(root)
    return names


STAGES = _register_stages(app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cdeit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """cdeit: prepare data, cache the teacher once, train ViT / DeiT / CdeiT students, evaluate."""


def run_command(argv: list[str]) -> int:
    """Run one `cdeit ...` command line in this process and return its exit status (0 = success)."""
    import click

    command = typer.main.get_command(app)
    try:
        status = command.main(args=[str(a) for a in argv], prog_name="cdeit", standalone_mode=False)
    except SystemExit as exc:  # friendly_errors exits with 2 after printing its sentence
        return exc.code if isinstance(exc.code, int) else 1
    except click.ClickException as exc:  # a usage error: print it the way the shell would
        exc.show()
        return exc.exit_code
    return status if isinstance(status, int) else 0


def main() -> None:
    app()


if __name__ == "__main__":
    main()
