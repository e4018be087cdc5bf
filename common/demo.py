"""`cdeit demo`: the whole pipeline in the paper's setting, offline, in minutes on a laptop CPU.

Procedural 10-class images (told apart by shape, not colour; no download) -> a teacher trained on a large clean
procedural set (`cdeit train --model`) -> the students' small dataset with cdeit's own corruptions, from photographs
the teacher never saw -> the teacher frozen and cached, its head fitted on the corrupted train split (paper 4.1) ->
ViT baseline, DeiT (hard) and CdeiT (hard, strategy 2) over seeds, from the cache -> evaluated against the baseline
-> one comparison with paired intervals. Sizes follow the rule in docs/decisions.md. Every stage reuses what a
previous run finished.

The demo runs the very command lines a user would type (through the root app, in this process), so it
imports no stage and shows the workflow of the README one command at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cdeit.common.console import console, friendly_errors
from cdeit.common.console import out as stdout
from cdeit.common.errors import CdeitError

SIZES = "10,5,20"  # the students' photographs per class per type (x 11 types): 1,100 / 550 / 2,200 images
TEACHER = "resnet10t"  # a small timm CNN: learns the shapes to ~99% clean val in 4 epochs on 2 cores
TEACHER_FACTOR = 10  # the teacher's clean photographs: 10x the students' (docs/decisions.md, the demo's sizes)
TEACHER_SEED = 1  # the teacher's photographs are drawn from their own seed: none is a student's photograph
STUDENTS = (  # (run name, student, distillation): the paper's three models
    ("vit", "vit", "none"),
    ("deit-hard", "deit", "hard"),
    ("cdeit-hard", "cdeit", "hard"),
)
# the students: 4 blocks of width 96 (0.46M parameters), 15 epochs. The full 5.4M ViT-Tiny does not fit 6 runs in
# 10 minutes on 2 cores, and 4 blocks of 192 for 6 epochs stayed at chance (docs/demo.md, first measurement)
STUDENT_KWARGS = '{"depth": 4, "embed_dim": 96, "num_heads": 3}'
STUDENT_EPOCHS = 15
# small data, few epochs: a larger step and one warmup epoch (the Table 1 defaults assume 495k images)
TRAIN_ARGS = ("--batch-size", "32", "--lr-per-512", "8e-3", "--eval-batch-size", "256", "--workers", "2")
# the teacher learns clean shapes: no Mixup or erasing, a larger batch
TEACHER_ARGS = ("--distill", "none", "--batch-size", "64", "--lr-per-512", "8e-3", "--mixup-prob", "0",
                "--erasing-prob", "0", "--eval-batch-size", "256", "--workers", "2")  # fmt: skip
# the head over 1,100 cached features: the paper's 300 epochs, at a step that converges on so few images
HEAD_ARGS = ("--head-epochs", "300", "--head-lr", "1e-3")


def _run(*argv: str) -> None:
    """One `cdeit` command line; a failure stops the demo with the stage's own sentence above it."""
    from cdeit.common.cli import run_command

    console.print(f"[dim]$ cdeit {' '.join(argv)}[/]")
    status = run_command(list(argv))
    if status != 0:
        raise CdeitError(f"the demo stopped because `cdeit {argv[0]}` failed (exit {status}); see the message above.")


def _stage(title: str) -> None:
    console.rule(f"[bold]{title}")


def parse_sizes(sizes: str) -> tuple[int, int, int]:
    """TRAIN,VAL,TEST photographs per class per type, each at least 1."""
    parts = sizes.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise CdeitError(
            f"--per-class-per-type {sizes!r} must be three positive integers TRAIN,VAL,TEST such as 10,5,20."
        )
    train, val, test = (int(p) for p in parts)
    return train, val, test


def teacher_sizes(sizes: tuple[int, int, int]) -> tuple[int, int]:
    """The teacher's clean photographs per class (train, val): TEACHER_FACTOR x the students' photographs per class,
    a tenth of them (at least 2) for its validation."""
    total = TEACHER_FACTOR * sum(sizes)
    val = max(2, total // 10)
    return total - val, val


def run_demo(
    out: Path, epochs: int, device: str, teacher: str, sizes: str, model_kwargs: str, seeds: int = 2,
    teacher_epochs: int = 5,
) -> Path:  # fmt: skip
    """Run (or finish) every stage in `out`; returns the comparison table (Markdown)."""
    from cdeit.common.dataset import load_manifest

    student_sizes = parse_sizes(sizes)
    t_train, t_val = teacher_sizes(student_sizes)
    out.mkdir(parents=True, exist_ok=True)
    runs, cache = out / "runs", out / "cache"
    _stage("1/6 images: procedural 10-class pictures in the CIFAR-10 layout (no download), two disjoint draws")
    _synth(out / "raw-teacher", t_train + t_val + 1, TEACHER_SEED)  # + 1: prepare wants a test split
    _synth(out / "raw", sum(student_sizes), 0)

    _stage(f"2/6 datasets: the teacher's {10 * (t_train + t_val):,} clean photographs; the students' corrupted set")
    _run("data", "prepare", "--cifar10", str(out / "raw-teacher"), "--corruptions", "generate", "--types", "clean",
         "--out", str(out / "data-teacher"), "--per-class-per-type", f"{t_train},{t_val},1",
         "--workers", "2")  # fmt: skip
    _run("data", "prepare", "--cifar10", str(out / "raw"), "--corruptions", "generate", "--out", str(out / "data"),
         "--per-class-per-type", sizes, "--workers", "2")  # fmt: skip
    for data in (out / "data-teacher", out / "data"):
        console.print(f"{data}: " + ", ".join(f"{k} {v['count']:,}" for k, v in load_manifest(data)["splits"].items()))

    _stage(f"3/6 teacher: {teacher} trained on the clean set for {teacher_epochs} epochs (cdeit train --model)")
    _train(runs / "teacher", ("--model", teacher, "--data", str(out / "data-teacher"), *TEACHER_ARGS,
           "--epochs", str(teacher_epochs), "--warmup-epochs", "0.5", "--device", device))  # fmt: skip

    _stage("4/6 cache: the frozen teacher run once, its head fitted on the students' corrupted train split")
    _teacher(out / "data", cache, runs / "teacher", device)

    _stage(f"5/6 students: ViT, DeiT (hard), CdeiT (hard, strategy 2), {seeds} seeds, {epochs} epochs each")
    names = [f"{name}-s{seed}" for seed in range(seeds) for name, _, _ in STUDENTS]
    for seed in range(seeds):
        for name, student, distill in STUDENTS:
            teach = ("--teacher-cache", str(cache)) if distill != "none" else ()
            _train(runs / f"{name}-s{seed}", ("--student", student, "--distill", distill, "--data", str(out / "data"),
                   *teach, "--epochs", str(epochs), "--warmup-epochs", str(min(1.0, epochs / 2)), "--seed", str(seed),
                   "--device", device, "--model-kwargs", model_kwargs, *TRAIN_ARGS))  # fmt: skip

    _stage("6/6 evaluation against the ViT baseline of the same seed, then the comparison")
    common = ("--split", "test", "--teacher-cache", str(cache), "--device", device, "--batch-size", "256",
              "--workers", "2")  # fmt: skip
    for name in names:
        _run("evaluate", str(runs / name), "--baseline", str(runs / f"vit-{name.rsplit('-', 1)[1]}"), *common)
    _run("compare", *(str(runs / name) for name in names), "--out", str(out), "--split", "test")
    return out / "compare.md"


def _synth(raw: Path, per_class: int, seed: int) -> None:
    if not (raw / "cifar-10-batches-py" / "batches.meta").is_file():
        train = max(1, per_class - per_class // 4)  # synth's train/test layout; prepare pools both (--sources all)
        _run("data", "synth", "--to", str(raw), "--train-per-class", str(train), "--test-per-class",
             str(per_class - train), "--seed", str(seed))  # fmt: skip


def _train(run: Path, argv: tuple[str, ...]) -> None:
    """`cdeit train` into `run`, unless it finished; an interrupted run resumes from its last checkpoint."""
    if (run / "summary.json").is_file():
        console.print(f"{run} is finished; reusing it.")
        return
    resume = ("--resume", str(run)) if (run / "checkpoints" / "last.pt").is_file() else ()
    _run("train", "--out", str(run), *argv, *resume)


def _teacher(data: Path, cache: Path, teacher_run: Path, device: str) -> None:
    from cdeit.common.cache import read_cache_manifest

    if (cache / "manifest.json").is_file() and read_cache_manifest(cache).get("complete"):
        console.print(f"{cache} is complete; reusing it.")
        return
    _run("precompute-teacher", "--data", str(data), "--out", str(cache), "--teacher", f"run:{teacher_run}",
         *HEAD_ARGS, "--batch-size", "64", "--shard-size", "512", "--device", device, "--workers", "2")  # fmt: skip


@friendly_errors
def demo(
    out: Annotated[Path, typer.Option(help="Directory for every artefact of the demo.")] = Path("demo"),
    epochs: Annotated[int, typer.Option(help="Epochs per student.")] = STUDENT_EPOCHS,
    seeds: Annotated[int, typer.Option(help="Seeds per student (2 or more give paired intervals).")] = 2,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    teacher: Annotated[
        str, typer.Option(help="timm name of the teacher the demo trains on its clean set (CNNs too).")
    ] = TEACHER,
    teacher_epochs: Annotated[int, typer.Option(help="Epochs of the teacher on its clean set.")] = 5,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="No longer used: the demo trains its own teacher (see precompute-teacher --checkpoint)."),
    ] = None,
    per_class_per_type: Annotated[
        str, typer.Option(help="The students' photographs TRAIN,VAL,TEST per class per type.")
    ] = SIZES,
    model_kwargs: Annotated[
        str, typer.Option(help="Student arguments as JSON, e.g. '{\"depth\": 6}'.")
    ] = STUDENT_KWARGS,
) -> None:
    """Run the whole pipeline on procedural images that need no download; rerunning reuses finished stages."""
    if checkpoint is not None:
        raise CdeitError(
            "--checkpoint no longer applies to the demo, which trains its own teacher on a clean set; to cache a "
            "teacher from a weights file, run `cdeit precompute-teacher --checkpoint FILE` on your dataset."
        )
    for option, value in (("--epochs", epochs), ("--seeds", seeds), ("--teacher-epochs", teacher_epochs)):
        if value < 1:
            raise CdeitError(f"{option} must be at least 1, not {value}.")
    table = run_demo(out, epochs, device, teacher, per_class_per_type, model_kwargs, seeds, teacher_epochs)
    stdout.print(f"comparison: {table} ({table.with_suffix('.csv')}), plot: {table.with_suffix('.png')}")
    stdout.print(f"teacher: {out / 'runs' / 'teacher'}, cache: {out / 'cache'}")
    for seed in range(seeds):
        for name, _, _ in STUDENTS:
            stdout.print(f"report: {out / 'runs' / f'{name}-s{seed}' / 'eval' / 'report.md'}")


def register(root: typer.Typer) -> None:
    """Entry point `cdeit.commands:demo`: adds `cdeit demo`."""
    root.command("demo")(demo)
