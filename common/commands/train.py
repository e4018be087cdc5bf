"""`cdeit train`: every hyper-parameter of the paper's Table 1 as an option whose default is the paper's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common.console import friendly_errors

_T1 = "Table 1"


def parse_model_kwargs(text: str) -> dict:
    """`--model-kwargs` JSON to a dict, or one sentence saying what is wrong."""
    import json

    from common.errors import CdeitError

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise CdeitError(f"--model-kwargs {text!r} is not a JSON object; write e.g. '{{\"depth\": 6}}'.")
    return value


@friendly_errors
def train(
    ctx: typer.Context,
    student: Annotated[str, typer.Option(help="vit | deit | cdeit.")] = "deit",
    distill: Annotated[str, typer.Option(help="none | soft (Eq. 4/7) | hard (Eq. 5/6).")] = "hard",
    head_strategy: Annotated[
        str | None, typer.Option(help="CdeiT only: none | linear | mlp (paper strategies 1-3; default linear).")
    ] = None,
    data: Annotated[str, typer.Option(help="Dataset directory from `cdeit data prepare`.")] = "",
    teacher_cache: Annotated[str | None, typer.Option(help="Cache from `cdeit precompute-teacher`.")] = None,
    out: Annotated[str, typer.Option(help="Run directory (config, checkpoints, metrics, model).")] = "",
    config: Annotated[
        Path | None, typer.Option(help="Repeat a run: read RUN/config.json; options given override.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    epochs: Annotated[int, typer.Option(help=_T1)] = 15,
    batch_size: Annotated[int, typer.Option(help=f"{_T1}; global, split over torchrun ranks.")] = 1024,
    lr_per_512: Annotated[float, typer.Option(help=f"{_T1}: lr = lr_per_512 x batch / 512.")] = 5e-4,
    weight_decay: Annotated[float, typer.Option(help=f"{_T1}; not on norms, biases and tokens.")] = 0.05,
    warmup_epochs: Annotated[float, typer.Option(help=_T1)] = 3.0,
    min_lr: Annotated[float, typer.Option(help="Floor of the cosine schedule.")] = 1e-5,
    warmup_lr: Annotated[float, typer.Option(help="Learning rate at the start of the warmup.")] = 1e-6,
    label_smoothing: Annotated[float, typer.Option(help=_T1)] = 0.1,
    dropout: Annotated[float, typer.Option(help=_T1)] = 0.0,
    drop_path: Annotated[float, typer.Option(help=f"{_T1}: stochastic depth.")] = 0.1,
    mixup_prob: Annotated[float, typer.Option(help=f"{_T1}: probability of Mixup per batch.")] = 0.3,
    mixup_alpha: Annotated[float, typer.Option(help="Beta(alpha, alpha) of the Mixup weight.")] = 0.8,
    cutmix_prob: Annotated[float, typer.Option(help="Probability of CutMix per batch (off in the paper).")] = 0.0,
    cutmix_alpha: Annotated[float, typer.Option(help="Beta(alpha, alpha) of the CutMix weight.")] = 1.0,
    erasing_prob: Annotated[float, typer.Option(help=f"{_T1}: random erasing probability.")] = 0.25,
    tau: Annotated[float, typer.Option(help="Distillation temperature (paper: 3).")] = 3.0,
    lam: Annotated[float, typer.Option("--lambda", help="Loss balance lambda of Eq. 4 and 7 (paper: 0.5).")] = 0.5,
    clip_grad: Annotated[float | None, typer.Option(help="Max gradient norm (off by default).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, order, Mixup and erasing.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = "auto",
    precision: Annotated[str, typer.Option(help="bf16 (autocast on CUDA) | fp32.")] = "bf16",
    compile: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="torch.compile (default: on CUDA).")
    ] = None,
    workers: Annotated[int, typer.Option(help="FFCV loader threads.")] = 2,
    eval_every: Annotated[int, typer.Option(help="Validate every N epochs.")] = 1,
    eval_batch_size: Annotated[int, typer.Option(help="Batch size of validation.")] = 1024,
    model_kwargs: Annotated[str, typer.Option(help="Extra model arguments as JSON, e.g. '{\"depth\": 6}'.")] = "{}",
    align: Annotated[
        str,
        typer.Option(
            help="Align the student with the cached teacher features, e.g. embedding=1.0,patches=1.0,attention=1.0 "
            "(needs a cache made with --targets; see docs/asymmetric.md). Default: none (the paper)."
        ),
    ] = "",
    align_metric: Annotated[
        str, typer.Option(help="cosine | mse: distance of the projected embedding and patch features.")
    ] = "cosine",
) -> None:
    """Train a ViT / DeiT / CdeiT student; the teacher never runs, its cached logits are joined by index."""
    import dataclasses

    from common.console import out as stdout
    from train.config import TrainConfig, parse_align

    given = dict(locals())
    given["model_kwargs"] = parse_model_kwargs(model_kwargs)
    given["align"] = parse_align(align)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: given[k] for k in fields}
    if config is not None:
        base = TrainConfig.from_json(config).to_json()
        explicit = {k for k in fields if getattr(ctx.get_parameter_source(k), "name", "") == "COMMANDLINE"}
        values = base | {k: values[k] for k in explicit}
    from train.trainer import train as run_training

    summary = run_training(TrainConfig(**values), resume=resume)
    if summary:
        stdout.print(
            f"done: {summary['epochs']} epochs, {summary['steps']} steps, "
            f"val acc {summary.get('val_acc', float('nan')):.2%}, "
            f"{summary['train_images_per_s']:,.0f} train images/s -> {Path(values['out']) / 'model.safetensors'}"
        )
