"""`cdeit demo`: the whole pipeline on the offline default, in minutes on a laptop CPU.

Procedural 10-class images (no download) -> 11-type dataset with cdeit's own corruptions -> DeiT-III Small
teacher cached once -> ViT baseline, DeiT (hard) and CdeiT (hard, strategy 2) trained from the cache ->
evaluated against the baseline -> one comparison table. Every stage reuses what a previous run finished.
The teacher's weights: `--checkpoint FILE`, else the local Hugging Face cache (found without network), else the
hub if it answers, else random weights, said loudly.

The demo runs the very command lines a user would type (through the root app, in this process), so it
imports no stage and shows the workflow of the README one command at a time.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import typer

from cdeit.common.console import console, friendly_errors
from cdeit.common.console import out as stdout
from cdeit.common.errors import CdeitError
from cdeit.common.hub import DEFAULT_TEACHER, timm_weights_in_cache

SIZES = "10,3,3"  # images per class per type: 1,100 / 330 / 330
STUDENTS = (  # (run name, student, distillation): the paper's three models
    ("vit", "vit", "none"),
    ("deit-hard", "deit", "hard"),
    ("cdeit-hard", "cdeit", "hard"),
)
# small data, few epochs: a larger step and one warmup epoch (half of a 1-epoch run; the Table 1 defaults assume
# 495k images)
TRAIN_ARGS = ("--batch-size", "32", "--lr-per-512", "8e-3", "--eval-batch-size", "256", "--workers", "2")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the timm hub answers at all (so an offline machine does not wait for a minute of retries)."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _run(*argv: str) -> None:
    """One `cdeit` command line; a failure stops the demo with the stage's own sentence above it."""
    from cdeit.common.cli import run_command

    console.print(f"[dim]$ cdeit {' '.join(argv)}[/]")
    status = run_command(list(argv))
    if status != 0:
        raise CdeitError(f"the demo stopped because `cdeit {argv[0]}` failed (exit {status}); see the message above.")


def _stage(title: str) -> None:
    console.rule(f"[bold]{title}")


def run_demo(
    out: Path, epochs: int, device: str, teacher: str | None, sizes: str, model_kwargs: str,
    checkpoint: Path | None = None,
) -> Path:  # fmt: skip
    """Run (or finish) every stage in `out`; returns the comparison table (Markdown)."""
    from cdeit.common.dataset import load_manifest

    parts = sizes.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise CdeitError(f"--per-class-per-type {sizes!r} must be three integers TRAIN,VAL,TEST such as 40,10,10.")
    out.mkdir(parents=True, exist_ok=True)
    raw, data, cache, runs = out / "raw", out / "data", out / "cache", out / "runs"
    _stage("1/5 images: procedural 10-class pictures in the CIFAR-10 layout (no download)")
    if not (raw / "cifar-10-batches-py" / "batches.meta").is_file():
        train_per_class = max(40, sum(int(x) for x in sizes.split(",") if x.strip().isdigit()))
        _run("data", "synth", "--to", str(raw), "--train-per-class", str(train_per_class), "--test-per-class", "10")

    _stage("2/5 dataset: clean + 10 generated corruptions, grouped split")
    _run("data", "prepare", "--cifar10", str(raw), "--corruptions", "generate", "--out", str(data),
         "--per-class-per-type", sizes, "--workers", "2")  # fmt: skip
    console.print(f"{data}: " + ", ".join(f"{k} {v['count']:,}" for k, v in load_manifest(data)["splits"].items()))

    _stage(f"3/5 teacher: {teacher or 'DeiT-III Small'} at its input size, run once, head fitted on its features")
    _teacher(data, cache, teacher, device, checkpoint)

    _stage(f"4/5 students: ViT, DeiT (hard), CdeiT (hard, strategy 2), {epochs} epochs each, teacher never runs")
    for name, student, distill in STUDENTS:
        _student(runs / name, student, distill, data, cache, epochs, device, model_kwargs)

    _stage("5/5 evaluation against the ViT baseline")
    common = ("--split", "test", "--teacher-cache", str(cache), "--device", device, "--batch-size", "256",
              "--workers", "2")  # fmt: skip
    for name, _, _ in STUDENTS:
        _run("evaluate", str(runs / name), "--baseline", str(runs / "vit"), *common)
    _run("compare", *(str(runs / name) for name, _, _ in STUDENTS), "--out", str(out), "--split", "test")
    return out / "compare.md"


def pretrained_available(teacher: str | None, checkpoint: Path | None) -> bool:
    """Whether the teacher can have real weights: a checkpoint, the local HF cache (no network), or the hub."""
    if checkpoint is not None:
        return True
    name = teacher or DEFAULT_TEACHER
    cached = timm_weights_in_cache(name)
    if cached is not None:
        console.print(f"The weights of {name} are in the local Hugging Face cache ({cached}); the demo uses them.")
        return True
    return hub_reachable()


def _teacher(data: Path, cache: Path, teacher: str | None, device: str, checkpoint: Path | None = None) -> None:
    from cdeit.common.cache import read_cache_manifest

    previous = read_cache_manifest(cache) if (cache / "manifest.json").is_file() else None
    if previous and previous.get("complete"):
        console.print(f"{cache} is complete; reusing it.")
        return
    random = previous["provenance"]["random_weights"] if previous else not pretrained_available(teacher, checkpoint)
    if random and not previous:
        console.print(
            "[bold yellow]The timm hub cannot be reached, so the demo's teacher has RANDOM weights: its features "
            "are random projections and only its fitted 10-way head has learned anything. Online, the same "
            "command uses the pretrained DeiT-III Small.[/]"
        )
    # random features are near-constant (DeiT-III's LayerScale starts at 1e-6): only a head fitted on
    # z-scored features with a larger step finds what little they hold; pretrained ones get the paper's fit
    head = ("--random-weights", "--head-lr", "1e-2", "--head-standardize") if random else ()
    weights = ("--checkpoint", str(checkpoint)) if checkpoint is not None and not random else ()
    _run("precompute-teacher", "--data", str(data), "--out", str(cache), *(("--teacher", teacher) if teacher else ()),
         *weights, *head, "--batch-size", "64", "--shard-size", "512", "--device", device, "--head-epochs", "300",
         "--workers", "2")  # fmt: skip


def _student(run: Path, student: str, distill: str, data: Path, cache: Path, epochs: int, device: str,
             model_kwargs: str) -> None:  # fmt: skip
    if (run / "summary.json").is_file():
        console.print(f"{run} is finished; reusing it.")
        return
    teacher = ("--teacher-cache", str(cache)) if distill != "none" else ()
    resume = ("--resume", str(run)) if (run / "checkpoints" / "last.pt").is_file() else ()
    _run("train", "--student", student, "--distill", distill, "--data", str(data), "--out", str(run), *teacher,
         "--epochs", str(epochs), "--warmup-epochs", str(min(1.0, epochs / 2)), "--device", device, "--model-kwargs",
         model_kwargs, *TRAIN_ARGS, *resume)  # fmt: skip


@friendly_errors
def demo(
    out: Annotated[Path, typer.Option(help="Directory for every artefact of the demo.")] = Path("demo"),
    epochs: Annotated[int, typer.Option(help="Epochs per student.")] = 3,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    teacher: Annotated[
        str | None, typer.Option(help="timm name of the teacher (default: precompute-teacher's, DeiT-III Small).")
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="The teacher's weights as a file (.safetensors or weights-only .pth), e.g. on a node "
            "without internet; passed to precompute-teacher --checkpoint."
        ),
    ] = None,
    per_class_per_type: Annotated[str, typer.Option(help="Dataset size TRAIN,VAL,TEST per class per type.")] = SIZES,
    model_kwargs: Annotated[str, typer.Option(help="Student arguments as JSON, e.g. '{\"depth\": 6}'.")] = "{}",
) -> None:
    """Run the whole pipeline on procedural images that need no download; rerunning reuses finished stages."""
    if epochs < 1:
        raise CdeitError(f"--epochs must be at least 1, not {epochs}.")
    table = run_demo(out, epochs, device, teacher, per_class_per_type, model_kwargs, checkpoint)
    stdout.print(f"comparison: {table} ({table.with_suffix('.csv')}), plot: {table.with_suffix('.png')}")
    for name, _, _ in STUDENTS:
        stdout.print(f"report: {out / 'runs' / name / 'eval' / 'report.md'}")


def register(root: typer.Typer) -> None:
    """Entry point `cdeit.commands:demo`: adds `cdeit demo`."""
    root.command("demo")(demo)
