"""`cdeit data ...`: download, prepare, audit and show datasets."""

from __future__ import annotations

import typer

app = typer.Typer(help="Build the 11-type dataset (clean + 10 corruptions) into FFCV .beton files.", no_args_is_help=True)
