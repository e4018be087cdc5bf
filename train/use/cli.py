"""The use commands: `cdeit evaluate`, `predict` and `export` (a trained student measured and put to use)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cdeit.common.console import friendly_errors

CHECKPOINT_HELP = "Which weights of the run: last (model.safetensors), best (best.safetensors) or a .safetensors file."


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
    checkpoint: Annotated[str, typer.Option(help=CHECKPOINT_HELP + " Not last: RUN/eval/<name>/.")] = "last",
) -> None:
    """Accuracy, cross-entropy and ECE per corruption and severity, mCE, plots and a Markdown report."""
    from rich.table import Table

    from cdeit.common.console import out
    from cdeit.common.lock import output_lock
    from cdeit.train.core.rundir import read_run_config
    from cdeit.train.use.evaluate import check_outputs
    from cdeit.train.use.evaluate import evaluate as run_eval
    from cdeit.train.use.report import key_table

    read_run_config(run)  # the lock would create RUN/eval: first check RUN is a run, and its eval folders its own
    check_outputs(run, checkpoint, split)
    with output_lock(run / "eval", "cdeit evaluate"):
        result = run_eval(run, data, split, baseline, teacher_cache, device, batch_size, workers, checkpoint)
    table = Table(title=f"{run} ({checkpoint}) on {split}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in key_table(result):
        table.add_row(k, v)
    out.print(table)
    out.print(f"report: {result['files']['report']}\nnumbers: {result['files']['json']}")


@friendly_errors
def predict(
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files of any size.")],
    model: Annotated[Path, typer.Option(help="Run directory or exported .safetensors file.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "cpu",
    checkpoint: Annotated[str, typer.Option(help=CHECKPOINT_HELP)] = "last",
) -> None:
    """Classify image files; CdeiT also names the corruption it sees. Unreadable files are reported, not fatal."""
    from cdeit.common.console import console, out
    from cdeit.train.use.deploy import predict_files

    results = predict_files(model, images, device, checkpoint)
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
    checkpoint: Annotated[str, typer.Option(help=CHECKPOINT_HELP)] = "last",
) -> None:
    """Write the student as safetensors plus a JSON model config that timm.create_model rebuilds."""
    from cdeit.common.console import out
    from cdeit.common.lock import output_lock
    from cdeit.train.use.deploy import check_export_target
    from cdeit.train.use.deploy import export as run_export

    check_export_target(run, to)  # before the lock, which creates the folder of --to
    with output_lock(to.parent, "cdeit export"):
        weights, config = run_export(run, to, checkpoint)
    out.print(f"wrote {weights} and {config}")


def register(root: typer.Typer) -> None:
    """Adds evaluate, predict and export (called from train/cli.py's register)."""
    for name, fn in (("evaluate", evaluate), ("predict", predict), ("export", export)):
        root.command(name)(fn)
