"""`cdeit train --model NAME`: any timm classifier trained on the dataset's labels alone (a baseline, or a teacher
for `precompute-teacher --teacher run:RUN_DIR`), CNNs included.

The model is timm's, built from scratch with `--model-kwargs` as it takes them, `num_classes` from the dataset and
the dropout rates that are not zero; its input is the dataset's 32px images normalised as the students' (CIFAR-10
statistics). It trains through the students' loop with their label loss (`LabelLoss` of the ViT: one head, `cls`)
inside common.run_model's `TimmClassifier`, which also gives its file the model's name, kwargs and input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cdeit.common.errors import CdeitError

if TYPE_CHECKING:
    from cdeit.common.run_model import TimmClassifier

TrainConfig = Any  # train/core/config.py's TrainConfig, which imports this module (so it is not imported back)

SET_BY_TRAINING = {
    "num_classes": "the dataset's class count",
    "drop_rate": "--dropout",
    "drop_path_rate": "--drop-path",
}


def check_model_run(cfg: TrainConfig) -> None:
    """A `--model` run trains on labels alone: one sentence for each option it cannot take, a name timm knows and
    kwargs that build a model reading the dataset's 32x32 images (built and run on the meta device)."""
    from cdeit.common.run_model import check_timm_kwargs, check_timm_name

    if cfg.distill != "none":
        raise CdeitError(f"--model trains without distillation; use --distill none, not {cfg.distill}.")
    given = [o for o, v in (("--head-strategy", cfg.head_strategy), ("--align", cfg.align),
                            ("--online-teacher", cfg.online_teacher)) if v]  # fmt: skip
    if given:
        raise CdeitError(f"{given[0]} applies to cdeit's students, not to --model {cfg.model}; drop it.")
    check_timm_name(cfg.model, "--model")
    check_timm_kwargs(cfg.model_kwargs, "--model-kwargs key")
    for key, option in SET_BY_TRAINING.items():
        if key in cfg.model_kwargs:
            raise CdeitError(f"--model-kwargs key {key!r} is set by training; use {option}.")
    _check_builds(cfg)


def _check_builds(cfg: TrainConfig) -> None:
    import torch

    from cdeit.common.dataset import IMAGE_SHAPE

    height, width, channels = IMAGE_SHAPE
    with torch.device("meta"):
        model = build_run_model(cfg, 10)
        try:
            model.eval()(torch.zeros(2, channels, height, width))
        except (AssertionError, ValueError, TypeError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise CdeitError(
                f"--model {cfg.model} cannot read the dataset's {height}x{width}x{channels} images ({first}); "
                "change --model-kwargs (e.g. img_size) or the model."
            ) from None


def model_kwargs(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    """What the model is built with and its file records: --model-kwargs, the class count, non-zero dropouts."""
    rates = {"drop_rate": cfg.dropout, "drop_path_rate": cfg.drop_path}
    return dict(cfg.model_kwargs, num_classes=num_classes, **{k: v for k, v in rates.items() if v})


def build_run_model(cfg: TrainConfig, num_classes: int) -> TimmClassifier:
    """The `--model` classifier with random weights, normalised with the students' CIFAR-10 statistics."""
    from cdeit.common.dataset import IMAGE_SHAPE
    from cdeit.common.run_model import build_timm_classifier
    from cdeit.train.core.models import CIFAR10_MEAN, CIFAR10_STD

    height, width, channels = IMAGE_SHAPE
    normalisation = {"input_size": [channels, height, width], "mean": CIFAR10_MEAN, "std": CIFAR10_STD}
    return build_timm_classifier(cfg.model, model_kwargs(cfg, num_classes), normalisation)
