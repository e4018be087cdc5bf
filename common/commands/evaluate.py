"""`cdeit evaluate`, `compare`, `predict` and `export`: reading and using trained students."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from common.console import friendly_errors


@friendly_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory from `cdeit train`.")],
    data: Annotated[str | None, typer.Option(help="Dataset directory (default: the one the run trained on).")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    baseline: Annotated[str | None, typer.Option(help="Baseline run for mCE (by convention the ViT).")] = None,
    teacher_cache: Annotated[str | None, typer.Option(help="Teacher cache: teacher accuracy and agreement.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.")] = 1024,
    workers: Annotated[int, typer.Option(help="FFCV loader threads.")] = 2,
) -> None:
    """Accuracy, cross-entropy and ECE per corruption and severity, mCE, plots and a Markdown report."""
    from rich.table import Table

    from common.console import out
    from train.evaluate import evaluate as run_eval
    from train.report import key_table

    result = run_eval(run, data, split, baseline, teacher_cache, device, batch_size, workers)
    table = Table(title=f"{run} on {split}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in key_table(result):
        table.add_row(k, v)
    out.print(table)
    out.print(f"report: {result['files']['report']}\nnumbers: {result['files']['json']}")


@friendly_errors
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Evaluated run directories.")],
    out: Annotated[Path, typer.Option(help="Directory for compare.md, compare.csv and compare.png.")] = Path("."),
    split: Annotated[str, typer.Option(help="Split whose evaluation to compare.")] = "test",
) -> None:
    """One table in the style of the paper's Table 3, and a plot of accuracy per image type."""
    from common.console import out as stdout
    from train.report import write_compare

    files = write_compare(runs, out, split)
    stdout.print(files["markdown"].read_text())
    stdout.print(f"table: {files['markdown']} ({files['csv']}), plot: {files['plot']}")


@friendly_errors
def predict(
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files of any size.")],
    model: Annotated[Path, typer.Option(help="Run directory or exported .safetensors file.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "cpu",
) -> None:
    """Classify image files; CdeiT also names the corruption it sees. Unreadable files are reported, not fatal."""
    from common.console import console, out
    from train.use import predict_files

    results = predict_files(model, images, device)
    for r in results:
        if as_json:
            out.print(json.dumps(r), highlight=False)
        elif "error" in r:
            console.print(f"[red]{r['error']}[/]")
        else:
            extra = f"  corruption {r['corruption']} ({r['corruption_confidence']:.1%})" if "corruption" in r else ""
            out.print(f"{r['file']}: {r['class']} ({r['confidence']:.1%}){extra}")
    if any("error" in r for r in results):
        raise typer.Exit(1)


@friendly_errors
def export(
    run: Annotated[Path, typer.Argument(help="Run directory from `cdeit train`.")],
    to: Annotated[Path, typer.Option(help="Output .safetensors file (a .json config is written beside it).")],
) -> None:
    """Write the student as safetensors plus a JSON model config that timm.create_model rebuilds."""
    from common.console import out
    from train.use import export as run_export

    weights, config = run_export(run, to)
    out.print(f"wrote {weights} and {config}")
