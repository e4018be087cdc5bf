"""`cdeit demo`: the whole pipeline on the offline default, in minutes on a laptop CPU.

Procedural 10-class images (no download) -> 11-type dataset with cdeit's own corruptions -> DeiT-III Small
teacher cached once -> ViT baseline, DeiT (hard) and CdeiT (hard, strategy 2) trained from the cache ->
evaluated against the baseline -> one comparison table. Every stage reuses what a previous run finished.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from common.console import friendly_errors

TEACHER = "deit3_small_patch16_224.fb_in22k_ft_in1k"
SIZES = (10, 3, 3)  # images per class per type: 1,100 / 330 / 330
STUDENTS = (  # (run name, student, distillation): the paper's three models
    ("vit", "vit", "none"),
    ("deit-hard", "deit", "hard"),
    ("cdeit-hard", "cdeit", "hard"),
)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the timm hub answers at all (so an offline machine does not wait for a minute of retries)."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _stage(title: str) -> None:
    from common.console import console

    console.rule(f"[bold]{title}")


def run_demo(
    out: Path,
    epochs: int = 3,
    device: str = "auto",
    teacher: str = TEACHER,
    sizes: tuple[int, int, int] = SIZES,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or finish) every stage in `out`; returns the paths of the comparison and reports."""
    from common.console import console

    out.mkdir(parents=True, exist_ok=True)
    _stage("1/5 images: procedural 10-class pictures in the CIFAR-10 layout (no download)")
    from data.synthetic import write_synthetic_cifar

    raw = out / "raw"
    if not (raw / "cifar-10-batches-py" / "batches.meta").is_file():
        write_synthetic_cifar(raw, train_per_class=max(40, sum(sizes)), test_per_class=10, seed=0)
    console.print(f"{raw / 'cifar-10-batches-py'}")

    _stage("2/5 dataset: clean + 10 generated corruptions, grouped split")
    from data.prepare import PrepareConfig, prepare

    data = out / "data"
    prepare(PrepareConfig(cifar10=raw, generate=True, out=data, per_class_per_type=sizes, workers=2))
    console.print(f"{data}: " + ", ".join(f"{k} {v['count']:,}" for k, v in _manifest(data)["splits"].items()))

    _stage(f"3/5 teacher: {teacher} at 224px, run once, head fitted on its features")
    cache = out / "cache"
    _teacher(data, cache, teacher, device)

    _stage(f"4/5 students: ViT, DeiT (hard), CdeiT (hard, strategy 2), {epochs} epochs each, teacher never runs")
    runs = [
        _student(out / "runs" / name, student, distill, data, cache, epochs, device, model_kwargs or {})
        for name, student, distill in STUDENTS
    ]

    _stage("5/5 evaluation against the ViT baseline")
    from train.evaluate import evaluate
    from train.report import write_compare

    reports = []
    for run in runs:
        result = evaluate(run, split="test", baseline=str(runs[0]), teacher_cache=str(cache), device=device,
                          batch_size=256, workers=2)  # fmt: skip
        reports.append(result["files"]["report"])
    files = write_compare(runs, out, "test")
    return {"compare": files, "reports": reports, "cache": cache, "data": data}


def _manifest(data: Path) -> dict[str, Any]:
    return json.loads((data / "manifest.json").read_text())


def _teacher(data: Path, cache: Path, teacher: str, device: str) -> None:
    from common.console import console
    from precompute.run import PrecomputeConfig, precompute_teacher

    manifest = cache / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("complete"):
        console.print(f"{cache} is complete; reusing it.")
        return
    previous = json.loads(manifest.read_text())["provenance"] if manifest.is_file() else None
    random = previous["random_weights"] if previous else not hub_reachable()
    if random and not previous:
        console.print(
            "[bold yellow]The timm hub cannot be reached, so the demo's teacher has RANDOM weights: its features "
            "are random projections and only its fitted 10-way head has learned anything. Online, the same "
            "command uses the pretrained DeiT-III Small.[/]"
        )
    # random features are near-constant (DeiT-III's LayerScale starts at 1e-6): only a head fitted on
    # z-scored features with a larger step finds what little they hold; pretrained ones get the paper's fit
    head = {"head_lr": 1e-2, "head_standardize": True} if random else {}
    cfg = PrecomputeConfig(data=data, out=cache, teacher=teacher, random_weights=random, batch_size=64,
                           shard_size=512, device=device, head_epochs=300, workers=2, **head)  # fmt: skip
    precompute_teacher(cfg)


def _student(
    run: Path, student: str, distill: str, data: Path, cache: Path, epochs: int, device: str, model_kwargs: dict
) -> Path:
    from common.console import console
    from train.config import TrainConfig
    from train.trainer import train

    if (run / "summary.json").is_file():
        console.print(f"{run} is finished; reusing it.")
        return run
    cfg = TrainConfig(
        student=student, distill=distill, data=str(data), out=str(run), epochs=epochs, batch_size=32,
        lr_per_512=8e-3, warmup_epochs=1, eval_batch_size=256, device=device, workers=2,
        teacher_cache=str(cache) if distill != "none" else None, model_kwargs=model_kwargs,
    )  # fmt: skip
    train(cfg, resume=(run / "checkpoints" / "last.pt").is_file())
    return run


@friendly_errors
def demo(
    out: Annotated[Path, typer.Option(help="Directory for every artefact of the demo.")] = Path("demo"),
    epochs: Annotated[int, typer.Option(help="Epochs per student.")] = 3,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    teacher: Annotated[str, typer.Option(help="timm name of the teacher.")] = TEACHER,
    per_class_per_type: Annotated[str, typer.Option(help="Dataset size TRAIN,VAL,TEST per class per type.")] = "10,3,3",
    model_kwargs: Annotated[str, typer.Option(help="Student arguments as JSON, e.g. '{\"depth\": 6}'.")] = "{}",
) -> None:
    """Run the whole pipeline on procedural images that need no download; rerunning reuses finished stages."""
    from common.commands.data import _triple
    from common.commands.train import parse_model_kwargs
    from common.console import out as stdout

    result = run_demo(out, epochs, device, teacher, _triple(per_class_per_type), parse_model_kwargs(model_kwargs))
    stdout.print(result["compare"]["markdown"].read_text())
    stdout.print(f"comparison: {result['compare']['markdown']} ({result['compare']['csv']}), "
                 f"plot: {result['compare']['plot']}")  # fmt: skip
    for report in result["reports"]:
        stdout.print(f"report: {report}")
