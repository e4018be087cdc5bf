"""What a student can be, in words: the student kinds, distillation types and head strategies, and the model
arguments a student takes, each with the one function that checks it.

Both `config.py` (TrainConfig) and `models.py` (the students) take these from here, so neither imports the other
to learn them (config imports models only to build a student on the meta device). No torch: `cdeit --help` and
the study planner import it cheaply.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal, get_args

from cdeit.common.errors import CdeitError

StudentKind = Literal["vit", "deit", "cdeit"]
DistillKind = Literal["none", "soft", "hard"]
HeadStrategy = Literal["none", "linear", "mlp"]  # CdeiT's strategies 1-3 (paper 3.3)
STUDENTS: tuple[str, ...] = get_args(StudentKind)
DISTILLS: tuple[str, ...] = get_args(DistillKind)
HEAD_STRATEGIES: tuple[str, ...] = get_args(HeadStrategy)
DEFAULT_HEAD_STRATEGY: HeadStrategy = "linear"  # strategy 2, the paper's best (4.3)
MODEL_NAMES: dict[str, str] = {  # each student's timm name (train/core/models.py registers them)
    "vit": "vit_tiny_patch4_32",
    "deit": "deit_tiny_distilled_patch4_32",
    "cdeit": "cdeit_tiny_patch4_32",
}


def resolve_head_strategy(student: str, head_strategy: str | None, where: str = "head_strategy") -> HeadStrategy | None:
    """The head strategy a `student` trains with: cdeit's given one or 'linear' by default, None for the others.

    The one place that resolves and checks it; an unknown student or strategy, or a strategy given to a student
    without a corruption token, is one CdeitError whose sentence starts with `where` (an option, a file's entry).
    """
    if student not in STUDENTS:
        raise CdeitError(f"student {student!r} is not one of {', '.join(STUDENTS)}.")
    if student != "cdeit":
        if head_strategy is not None:
            raise CdeitError(
                f"{where} applies only to the cdeit student, not {student!r}: a head strategy ({head_strategy!r}) "
                "only applies to the cdeit student's corruption token; leave it unset."
            )
        return None
    head_strategy = DEFAULT_HEAD_STRATEGY if head_strategy is None else head_strategy
    if head_strategy not in HEAD_STRATEGIES:
        raise CdeitError(f"{where} {head_strategy!r} is not one of {', '.join(HEAD_STRATEGIES)}.")
    return head_strategy  # type: ignore[return-value]


def check_distill(distill: str, student: str | None = None) -> DistillKind:
    """`distill` if it is a distillation type (and, given `student`, one that student can learn), else CdeitError."""
    if distill not in DISTILLS:
        raise CdeitError(f"distillation type {distill!r} is not one of {', '.join(DISTILLS)}.")
    if student == "vit" and distill != "none":
        raise CdeitError(f"distillation {distill!r} needs a distillation token: use student deit or cdeit, or 'none'.")
    return distill  # type: ignore[return-value]


# The model arguments a student takes from `--model-kwargs`, a study or a model file's metadata: only these keyword
# arguments of TokenViT, with these JSON types. Nothing else reaches timm.create_model, so a file from someone else
# cannot name `pretrained=True`, `pretrained_cfg_overlay`, `checkpoint_path` (which make timm read weights, possibly
# pickles, from elsewhere), and every trained model loads again. Each entry: (kind, minimum, maximum-exclusive).
_SIZE = ("int", 1, 1 << 16)
_RATE = ("float", 0.0, 1.0)
_FLAG = ("bool", None, None)
MODEL_KWARGS: dict[str, tuple[str, Any, Any]] = {
    "head_strategy": ("head_strategy", None, None),
    "num_corruptions": _SIZE, "corr_hidden_dim": _SIZE, "img_size": ("img_size", 1, 1 << 16), "patch_size": _SIZE,
    "embed_dim": _SIZE, "depth": ("int", 1, 1024), "num_heads": _SIZE, "num_classes": _SIZE, "in_chans": ("int", 1, 65),
    "drop_path_rate": _RATE, "drop_rate": _RATE, "attn_drop_rate": _RATE, "proj_drop_rate": _RATE,
    "pos_drop_rate": _RATE, "patch_drop_rate": _RATE, "mlp_ratio": ("float", 1e-3, 1024.0),
    "init_values": ("float_or_none", 0.0, 1e6), "qkv_bias": _FLAG, "qk_norm": _FLAG, "no_embed_class": _FLAG,
    "pre_norm": _FLAG, "fc_norm": ("bool_or_none", None, None), "class_token": _FLAG,
    "global_pool": ("token", None, None),
}  # fmt: skip
# What training sets from its own options (or the dataset), so `--model-kwargs` may not: key -> where to set it.
SET_BY_TRAINING = {
    "head_strategy": "--head-strategy",
    "drop_path_rate": "--drop-path",
    "drop_rate": "--dropout",
    "num_classes": "the dataset's class count",
}


def kwarg_ok(value: Any, kind: str, low: Any, high: Any) -> bool:
    """Whether one value has the JSON type and range a MODEL_KWARGS entry allows."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if kind == "int":
        return is_int and low <= value < high
    if kind == "img_size":
        items = value if isinstance(value, list) and len(value) == 2 else [value]
        return all(kwarg_ok(v, "int", low, high) for v in items)
    if kind in ("float", "float_or_none"):
        if value is None:
            return kind == "float_or_none"
        return (is_int or isinstance(value, float)) and math.isfinite(value) and low <= value < high
    if kind in ("bool", "bool_or_none"):
        return isinstance(value, bool) or (value is None and kind == "bool_or_none")
    if kind == "head_strategy":
        return value is None or value in HEAD_STRATEGIES
    return value == "token"  # global_pool: the students read their prefix tokens


def check_model_kwargs(kwargs: Mapping[str, Any], where: str, training: bool = True) -> dict[str, Any]:
    """`kwargs` if every key is a MODEL_KWARGS argument with an allowed value, else one CdeitError naming the key.

    The one check of model arguments: the command line and TrainConfig (`training`: the keys training sets
    itself are refused too) and model-file loading (`training` False). `where` starts each sentence:
    '--model-kwargs key' or 'FILE: model argument'.
    """
    allowed = [k for k in MODEL_KWARGS if not (training and k in SET_BY_TRAINING)]
    for key, value in kwargs.items():
        if training and key in SET_BY_TRAINING:
            raise CdeitError(
                f"{where} {key!r} is not an argument of the student to set here; use {SET_BY_TRAINING[key]}."
            )
        if key not in MODEL_KWARGS:
            raise CdeitError(
                f"{where} {str(key)[:80]!r} is not an argument of the student that cdeit accepts (only the students' "
                f"own sizes and rates, which every model file records); choose from {', '.join(allowed)}."
            )
        if not kwarg_ok(value, *MODEL_KWARGS[key]):
            raise CdeitError(f"{where} {key}={json.dumps(value)[:80]} has the wrong type or range.")
    return dict(kwargs)
