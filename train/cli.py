"""`cdeit train` (Table 1 defaults); `register` also adds the commands of use/ and studies/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cdeit.common.console import friendly_errors
from cdeit.common.errors import CdeitError
from cdeit.common.options import ConfigOptions, defaults
from cdeit.train.core.config import TrainConfig, format_align, parse_align

_T1 = "Table 1"
D = defaults(TrainConfig)  # the option defaults: TrainConfig is their only home


def parse_model_kwargs(text: str) -> dict:
    """`--model-kwargs` JSON to a dict, or one sentence saying what is wrong; its keys and values are checked by
    TrainConfig.validate (kinds.check_model_kwargs), like those of a --config file or a study."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise CdeitError(f"--model-kwargs {text!r} is not a JSON object; write e.g. '{{\"depth\": 6}}'.")
    return value


def parse_temperature(text: str) -> str | float:
    """`--teacher-temperature` text: auto, none, or a number (checked by TrainConfig.validate)."""
    if text in ("auto", "none"):
        return text
    try:
        return float(text)
    except ValueError:
        raise CdeitError(f"--teacher-temperature {text!r} is not auto, none or a number.") from None


TRAIN_OPTIONS = ConfigOptions(
    TrainConfig, model_kwargs=parse_model_kwargs, align=parse_align, teacher_temperature=parse_temperature
)


@friendly_errors
@TRAIN_OPTIONS.command
def train(
    ctx: typer.Context,
    student: Annotated[str, typer.Option(help="vit | deit | cdeit.")] = D.student,
    model: Annotated[
        str | None,
        typer.Option(
            help="Any timm model name instead of a student (CNNs too), trained on labels alone: a "
            "baseline, or a teacher (cache it with --teacher run:DIR)."
        ),
    ] = D.model,
    distill: Annotated[str, typer.Option(help="none | soft (Eq. 4/7) | hard (Eq. 5/6).")] = D.distill,
    head_strategy: Annotated[
        str | None, typer.Option(help="CdeiT only: none | linear | mlp (paper strategies 1-3; default linear).")
    ] = D.head_strategy,
    data: Annotated[str, typer.Option(help="Dataset directory from `cdeit data prepare`.")] = D.data,
    teacher_cache: Annotated[
        str | None, typer.Option(help="Teacher cache (cdeit precompute-teacher makes it).")
    ] = D.teacher_cache,
    online_teacher: Annotated[
        bool,
        typer.Option(
            "--online-teacher",
            help="Run the cache's teacher (its weights and head, proved by their hashes) on every augmented batch "
            "instead of reading its cached logits: the slow reference (see consistent views in docs).",
        ),
    ] = D.online_teacher,
    teacher_checkpoint: Annotated[
        str | None, typer.Option(help="--online-teacher: the weights file the cache's teacher was computed from.")
    ] = D.teacher_checkpoint,
    teacher_module: Annotated[
        str | None, typer.Option(help="--online-teacher: the --teacher-module file of the cache's teacher.")
    ] = D.teacher_module,
    out: Annotated[str, typer.Option(help="Run directory (config, checkpoints, metrics, model).")] = D.out,
    config: Annotated[
        Path | None, typer.Option(help="Repeat a run: read RUN/config.json; options given override.")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run in RUN from its last checkpoint, with the settings of RUN/config.json."),
    ] = None,
    epochs: Annotated[int, typer.Option(help=_T1)] = D.epochs,
    batch_size: Annotated[int, typer.Option(help=f"{_T1}; global, split over torchrun ranks.")] = D.batch_size,
    lr_per_512: Annotated[float, typer.Option(help=f"{_T1}: lr = lr_per_512 x batch / 512.")] = D.lr_per_512,
    weight_decay: Annotated[float, typer.Option(help=f"{_T1}; not on norms, biases and tokens.")] = D.weight_decay,
    warmup_epochs: Annotated[float, typer.Option(help=_T1)] = D.warmup_epochs,
    min_lr: Annotated[float, typer.Option(help="Floor of the cosine schedule.")] = D.min_lr,
    warmup_lr: Annotated[float, typer.Option(help="Learning rate at the start of the warmup.")] = D.warmup_lr,
    label_smoothing: Annotated[float, typer.Option(help=_T1)] = D.label_smoothing,
    dropout: Annotated[float, typer.Option(help=_T1)] = D.dropout,
    drop_path: Annotated[float, typer.Option(help=f"{_T1}: stochastic depth.")] = D.drop_path,
    mixup_prob: Annotated[float, typer.Option(help=f"{_T1}: probability of Mixup per batch.")] = D.mixup_prob,
    mixup_alpha: Annotated[float, typer.Option(help="Beta(alpha, alpha) of the Mixup weight.")] = D.mixup_alpha,
    cutmix_prob: Annotated[
        float, typer.Option(help="Probability of CutMix per batch (off in the paper).")
    ] = D.cutmix_prob,
    cutmix_alpha: Annotated[float, typer.Option(help="Beta(alpha, alpha) of the CutMix weight.")] = D.cutmix_alpha,
    erasing_prob: Annotated[float, typer.Option(help=f"{_T1}: random erasing probability.")] = D.erasing_prob,
    tau: Annotated[float, typer.Option(help="Distillation temperature (paper: 3).")] = D.tau,
    teacher_temperature: Annotated[
        str,
        typer.Option(
            help="Divide the cached logits by this before soft targets (tau on top): auto (the cache's temperature "
            "fitted on val, 1 if it has none), none (1) or a number."
        ),
    ] = str(D.teacher_temperature),
    lam: Annotated[
        float, typer.Option("--lambda", help="Teacher weight lambda of Eq. 4, 5 (DeiT) and 7 (paper: 0.5).")
    ] = D.lam,
    clip_grad: Annotated[float | None, typer.Option(help="Max gradient norm (off by default).")] = D.clip_grad,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, order, Mixup and erasing.")] = D.seed,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")] = D.device,
    precision: Annotated[str, typer.Option(help="bf16 (autocast on CUDA) | fp32.")] = D.precision,
    compile: Annotated[
        bool | None, typer.Option("--compile/--no-compile", help="torch.compile (default: on CUDA).")
    ] = D.compile,
    workers: Annotated[int, typer.Option(help="FFCV loader threads.")] = D.workers,
    eval_every: Annotated[int, typer.Option(help="Validate every N epochs.")] = D.eval_every,
    eval_batch_size: Annotated[int, typer.Option(help="Batch size of validation.")] = D.eval_batch_size,
    model_kwargs: Annotated[
        str, typer.Option(help="Extra model arguments as JSON, e.g. '{\"depth\": 6}'.")
    ] = json.dumps(D.model_kwargs),
    align: Annotated[
        str,
        typer.Option(
            help="Align the student with the cached teacher features, e.g. embedding=1, patches=1, attention=1 "
            "(needs a cache made with --targets; see asymmetric in docs). Default: none (the paper)."
        ),
    ] = format_align(D.align),
    align_metric: Annotated[
        str, typer.Option(help="cosine | mse: distance of the projected embedding and patch features.")
    ] = D.align_metric,
    # where a run starts and what it logs (issue 23), timm's names
    initial_checkpoint: Annotated[
        str | None,
        typer.Option(help="Start from these weights: a student .safetensors file or a run directory (its model)."),
    ] = D.initial_checkpoint,
    log_wandb: Annotated[
        bool, typer.Option("--log-wandb/--no-log-wandb", help="Also log to Weights & Biases (pip install wandb).")
    ] = D.log_wandb,
    # optimizer, EMA, accumulation, RandAugment: timm train.py's spellings (docs/training.md)
    opt: Annotated[
        str, typer.Option(help="Optimizer, by its name in timm (create_optimizer_v2): adamw | sgd | ...")
    ] = D.opt,
    momentum: Annotated[float, typer.Option(help="Momentum of --opt sgd and the like.")] = D.momentum,
    lr: Annotated[float | None, typer.Option(help="Absolute peak lr, instead of --lr-per-512.")] = D.lr,
    model_ema: Annotated[
        bool, typer.Option(help="Keep an EMA of the weights (timm ModelEmaV3), saved as model_ema.")
    ] = D.model_ema,
    model_ema_decay: Annotated[float, typer.Option(help="Decay of --model-ema per step.")] = D.model_ema_decay,
    grad_accum_steps: Annotated[
        int, typer.Option(help="Micro-batches of batch / N per optimizer step (same global batch).")
    ] = D.grad_accum_steps,
    aa: Annotated[str | None, typer.Option(help="RandAugment of timm, e.g. rand-m9-mstd0.5.")] = D.aa,
) -> None:
    """Train a ViT / DeiT / CdeiT student from cached teacher logits joined by index (--online-teacher: run it)."""
    from cdeit.common.console import out as stdout
    from cdeit.train.core.rundir import check_run_out, module_asked, resume_config
    from cdeit.train.core.trainer import train as run_training

    if {"lr", "lr_per_512"} <= TRAIN_OPTIONS.typed(ctx).keys():
        raise CdeitError("--lr and --lr-per-512 both set the learning rate; give only one.")
    if resume is not None:
        if config is not None:
            raise CdeitError(f"--resume {resume} reads the run's own config.json; drop --config.")
        cfg = resume_config(resume, TRAIN_OPTIONS.typed(ctx))  # the run's settings, the options typed here on top
    else:
        base = TrainConfig.read_json(config) if config is not None else None
        if base is not None:  # a file never chooses code to import: its teacher_module must be typed here too
            module_asked(
                base.get("teacher_module"), TRAIN_OPTIONS.typed(ctx).get("teacher_module"), f"--config {config}"
            )
        base = _model_run(TRAIN_OPTIONS.typed(ctx), base)
        cfg = TRAIN_OPTIONS.build(ctx, base).validate()  # with --config, only the options typed here override it
    from cdeit.common.lock import output_lock

    check_run_out(cfg.out)  # before the lock, which creates the folder: never a dataset, cache or study

    with output_lock(cfg.out, "cdeit train"):  # cfg is validated: it names --out
        summary = run_training(cfg, resume=resume is not None)
    if summary:
        stdout.print(
            f"done: {summary['epochs']} epochs, {summary['steps']} steps, "
            f"val acc {summary.get('val_acc', float('nan')):.2%}, "
            f"{summary['train_images_per_s']:,.0f} train images/s -> {Path(cfg.out) / 'model.safetensors'}"
        )


def _model_run(typed: dict, base: dict | None) -> dict | None:
    """`--model NAME`: no student (--student is refused) and, unless typed, no distillation."""
    if "model" not in typed:
        return base
    if "student" in typed:
        raise CdeitError(
            f"--student and --model are exclusive: --model {typed['model']} trains that timm model; drop one."
        )
    return {**(base or {}), "student": "vit", "distill": typed.get("distill", "none")}


def register(root: typer.Typer) -> None:
    """Entry point `cdeit.commands:train`: adds train, then evaluate, predict, export (use/) and sweep, compare
    (studies/), in that order."""
    root.command("train")(train)
    from cdeit.train.studies import cli as studies_cli
    from cdeit.train.use import cli as use_cli

    use_cli.register(root)
    studies_cli.register(root)
