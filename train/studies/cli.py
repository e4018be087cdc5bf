"""The study commands: `cdeit sweep` and `cdeit compare` (registered by train/cli.py's `register`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cdeit.common.console import friendly_errors


def parse_set(items: list[str]) -> dict:
    """`--set epochs=3` items to {key: value}; values are read as TOML (3, 0.5, true, "x"), else kept as text."""
    from cdeit.common.errors import CdeitError
    from cdeit.train.studies.study import tomllib

    values = {}
    for item in items:
        key, sep, text = (x.strip() for x in item.partition("="))
        if not sep or not key:
            raise CdeitError(f"--set {item!r} should be KEY=VALUE, e.g. --set epochs=3.")
        try:
            values[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            values[key] = text
    return values


def parse_seeds(text: str) -> list[int] | int:
    """`--seeds 0,1,2` or `--seeds 3`; one sentence when it is neither."""
    from cdeit.common.errors import CdeitError

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CdeitError(f"--seeds {text!r} should be a list of integers (0,1,2) or a count (3).") from None
    return values if "," in text else values[0] if values else []


@friendly_errors
def sweep(
    spec: Annotated[Path | None, typer.Argument(help="Study file (TOML, docs/studies.md).")] = None,
    preset: Annotated[str | None, typer.Option(help="The paper's grid: table2 | table3 | table4 | fig5.")] = None,
    data: Annotated[str | None, typer.Option(help="With --preset: dataset directory.")] = None,
    teacher_cache: Annotated[str | None, typer.Option(help="With --preset: teacher cache directory.")] = None,
    out: Annotated[Path | None, typer.Option(help="Study folder (default: the file's out, else beside it).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a shared option, e.g. --set epochs=3 (repeatable).")
    ] = None,
    slurm: Annotated[
        list[str] | None,
        typer.Option(help="Set a slurm key, e.g. --slurm partition=gpu (repeatable)."),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="Override the seeds: a list (0,1,2) or a count (3 means 0, 1, 2).")
    ] = None,
    jobs: Annotated[int, typer.Option(help="Trainings at once; the CPU threads are split between them.")] = 1,
    launcher: Annotated[str, typer.Option(help="local | submitit (SLURM; the file's slurm table).")] = "local",
    dry_run: Annotated[bool, typer.Option(help="Print the plan and what each run still needs; run nothing.")] = False,
    teacher_module: Annotated[
        str | None, typer.Option(help="The teacher_module file the study names: imported only when given here.")
    ] = None,
) -> None:
    """Run a study: every configuration x seed as an ordinary run; reruns skip finished runs, resume killed ones."""
    from cdeit.common.console import out as stdout
    from cdeit.common.errors import CdeitError
    from cdeit.train.studies.presets import preset_spec
    from cdeit.train.studies.study import plan_study, read_spec, spec_text, write_plan
    from cdeit.train.studies.sweep import describe
    from cdeit.train.studies.sweep import sweep as run_sweep

    if preset is not None:
        if spec is not None or not (data and teacher_cache and out):
            raise CdeitError("--preset takes no study file and needs --data DATA --teacher-cache CACHE --out DIR.")
        raw, file, text = preset_spec(preset, data, teacher_cache, str(out)), out / "study.toml", None
    elif spec is None:
        raise CdeitError("give a study file (see docs/studies.md) or --preset table2|table3|table4|fig5.")
    else:
        raw, file, text = read_spec(spec), spec, spec.read_text()
    for section, items in (("shared", set_), ("slurm", slurm)):
        if items:
            table = raw.setdefault(section, {})
            if not isinstance(table, dict):
                raise CdeitError(f"{file}: [{section}] should be a table of options.")
            table.update(parse_set(items))
            text = None
    if seeds is not None:
        raw.setdefault("study", {})["seeds"] = parse_seeds(seeds)
        text = None
    study = plan_study(raw, file, out, teacher_module)
    if dry_run:
        stdout.print("\n".join(describe(study)), highlight=False, markup=False)
        return
    write_plan(study, text if text is not None else spec_text(raw))  # the study file as asked, or as changed
    tally = run_sweep(study, jobs, launcher)
    if tally.failed:
        raise typer.Exit(1)


@friendly_errors
def compare(
    runs: Annotated[
        list[Path], typer.Argument(help="Study folders (from `cdeit sweep`) and evaluated run directories.")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Directory for compare.md/.csv/.png (default: STUDY/compare, else .).")
    ] = None,
    split: Annotated[str, typer.Option(help="Split whose evaluation to compare.")] = "test",
    reference: Annotated[
        str | None, typer.Option(help="Group to take paired differences against (default: the study's baseline).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda: for runs not evaluated yet.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size (runs not evaluated yet).")] = 1024,
    workers: Annotated[int, typer.Option(help="FFCV loader threads (runs not evaluated yet).")] = 2,
    checkpoint: Annotated[
        str, typer.Option(help="Compare each run's last or best model (its RUN/eval/best/).")
    ] = "last",
) -> None:
    """Groups by everything but the seed: n, mean ± std, paired differences with 95% intervals, the paper's tables.

    A run directory not evaluated yet is evaluated first, with the data, baseline and teacher cache of the others.
    """
    from cdeit.common.console import console
    from cdeit.common.console import out as stdout
    from cdeit.train.studies.compare import compare as run_compare
    from cdeit.train.use.evaluate import evaluate_missing

    plain = [r for r in runs if not (r / "plan.json").is_file()]  # run directories, not study folders
    if checkpoint not in ("last", "best"):
        from cdeit.common.errors import CdeitError

        raise CdeitError(f"--checkpoint {checkpoint} is unknown for compare; choose last or best (one per run).")
    for run in evaluate_missing(plain, split, device, batch_size, workers, checkpoint):
        console.print(f"evaluated {run} on {split} (it had no eval/{split}.json)")
    default = runs[0] / "compare" if len(runs) == 1 and (runs[0] / "plan.json").is_file() else Path(".")
    files = run_compare(runs, out or default, split, reference, checkpoint)["files"]
    stdout.print(files["markdown"].read_text(), markup=False)
    stdout.print(f"table: {files['markdown']} ({files['csv']}), plot: {files['plot']}")


def register(root: typer.Typer) -> None:
    """Adds `cdeit sweep` and `cdeit compare` (called from train/cli.py's register)."""
    root.command("sweep")(sweep)
    root.command("compare")(compare)
