"""The training configuration: one dataclass whose defaults are the paper's Table 1, saved in every run."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cdeit.common.errors import CdeitError
from cdeit.common.tokens import TOKEN_TARGETS

# The student kinds, distillation types and head strategies are declared in kinds.py (models.py takes them from
# there too); they are named here as well for the modules that read them from the config.
from cdeit.train.core.kinds import (
    DEFAULT_HEAD_STRATEGY,
    DISTILLS,
    HEAD_STRATEGIES,
    STUDENTS,
    DistillKind,
    HeadStrategy,
    StudentKind,
    check_distill,
    check_model_kwargs,
    resolve_head_strategy,
)

__all__ = [
    "DEFAULT_HEAD_STRATEGY", "DISTILLS", "HEAD_STRATEGIES", "STUDENTS", "DistillKind", "HeadStrategy", "StudentKind",
    "TrainConfig", "check_distill", "format_align", "parse_align", "resolve_head_strategy",
]  # fmt: skip
ALIGN_TARGETS = ("embedding", *TOKEN_TARGETS)  # docs/asymmetric.md
ALIGN_METRICS = ("cosine", "mse")
LAMBDA_DEFAULT = 0.5  # the paper's lambda: Eq. 4, 5 and 7 weigh label and teacher terms equally
ALIASES = {"lambda": "lam"}  # the command line's spelling of a field, accepted in a mapping of settings


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


MAX_COUNT = {"epochs": 100_000, "eval_every": 100_000, "batch_size": 2**20, "eval_batch_size": 2**20}  # typos above
MAX_RATE = 1e4  # learning rates, weight decay, warmup epochs and tau: larger is a typo (1e308 overflows lr x batch)


def accepts(value: Any, hint: Any) -> bool:
    """Whether a JSON or TOML value fits a TrainConfig field's type (an int is a valid float, a bool is not a
    number; Literal sets, `X | None`, dicts)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(accepts(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def type_name(hint: Any) -> str:
    """A field type in words: `an integer`, `one of 'vit', 'deit', 'cdeit'`, `a number`."""
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and typing.get_origin(hint) is not dict:  # X | None: TOML has no null, so only X can be written
        return " or ".join(type_name(a) for a in args)
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table"}
    return words.get(hint, words.get(typing.get_origin(hint), str(hint)))


def parse_align(text: str) -> dict[str, float]:
    """`--align embedding=1.0,patches=0.5` to {name: weight}, or one sentence saying what is wrong."""
    weights: dict[str, float] = {}
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        name, sep, value = (x.strip() for x in item.partition("="))
        if not sep:
            raise CdeitError(f"--align item {item!r} has no weight; write name=weight, e.g. embedding=1.0.")
        try:
            weights[name] = float(value)
        except ValueError:
            raise CdeitError(f"--align weight {value!r} of {name} is not a number; write e.g. {name}=1.0.") from None
    return weights


def format_align(weights: dict[str, float]) -> str:
    """{name: weight} to the `--align` text parse_align reads back ('' for none)."""
    return ",".join(f"{name}={weight:g}" for name, weight in weights.items())


@dataclass
class TrainConfig:
    # what to train
    student: StudentKind = "deit"
    model: str | None = (
        None  # any timm model name, trained on labels alone instead of a student (train/core/timm_run.py)
    )
    distill: DistillKind = "hard"
    head_strategy: HeadStrategy | None = None  # CdeiT only; None -> "linear" (strategy 2, the paper's best)
    data: str = ""  # dataset directory from `cdeit data prepare`
    teacher_cache: str | None = None  # cache directory from `cdeit precompute-teacher` (soft / hard only)
    online_teacher: bool = False  # run the cache's teacher on each augmented batch instead (train/core/online.py)
    teacher_checkpoint: str | None = None  # --online-teacher: the weights file the cache's teacher was built from
    teacher_module: str | None = None  # --online-teacher: the --teacher-module file the cache's teacher came from
    out: str = ""  # run directory
    # Table 1 of the paper
    epochs: int = 15
    batch_size: int = 1024  # global: split evenly over the ranks of a torchrun
    lr_per_512: float = 5e-4  # lr = lr_per_512 * batch_size / 512
    weight_decay: float = 0.05  # not on norms, biases, tokens and position embeddings
    warmup_epochs: float = 3.0
    min_lr: float = 1e-5  # cosine floor (DeiT's default)
    warmup_lr: float = 1e-6  # lr at step 0 of the linear warmup (DeiT's default)
    label_smoothing: float = 0.1
    dropout: float = 0.0
    drop_path: float = 0.1
    mixup_prob: float = 0.3
    mixup_alpha: float = 0.8  # Beta(0.8, 0.8), as DeiT
    cutmix_prob: float = 0.0  # the paper found CutMix harmful
    cutmix_alpha: float = 1.0
    erasing_prob: float = 0.25
    tau: float = 3.0
    # the cached logits are divided by this before soft targets (tau on top): auto, the temperature the cache
    # fitted on val (1 for a cache without one); none, 1; or a number
    teacher_temperature: str | float = "auto"
    lam: float = 0.5  # lambda of Eq. 4, 5 and 7 (DeiT's --distillation-alpha); refused where it does not enter
    clip_grad: float | None = None  # max gradient norm; None: no clipping
    # machinery
    seed: int = 0
    device: str = "auto"  # auto: cuda if available, else cpu
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16 autocast on CUDA; CPU runs fp32
    compile: bool | None = None  # None: torch.compile on CUDA, eager on CPU
    workers: int = 2  # FFCV loader threads
    eval_every: int = 1  # validate every N epochs (and always after the last)
    eval_batch_size: int = 1024
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"depth": 2} for tests
    # asymmetric, multi-level distillation (docs/asymmetric.md); empty: the paper's recipe
    align: dict[str, float] = field(default_factory=dict)  # embedding | patches | attention -> loss weight
    align_metric: str = "cosine"  # embedding and patches: cosine distance or mse on the projected features
    # where a run starts and what it logs (train/core/weights.py, train/core/tracking.py), timm's names
    initial_checkpoint: str | None = None  # start from a student file's (or a run directory's) weights
    log_wandb: bool = False  # also log to Weights & Biases (the wandb package is no dependency: pip install wandb)
    # optimizer, EMA, accumulation, RandAugment (timm's spellings; train/core/optim.py, ema.py, randaugment.py)
    opt: str = "adamw"  # any name of timm's create_optimizer_v2 (Table 1: AdamW; Table 4: SGD)
    momentum: float = 0.9  # optimizers with momentum (sgd: Nesterov, as timm's)
    lr: float | None = None  # absolute lr, instead of --lr-per-512's lr_per_512 x batch / 512
    model_ema: bool = False  # keep timm's ModelEmaV3 of the weights, validated and saved beside the model
    model_ema_decay: float = 0.9998
    grad_accum_steps: int = 1  # micro-batches of batch_size / N per optimizer step; the global batch stays
    aa: str | None = None  # RandAugment, e.g. rand-m9-mstd0.5 (timm's rand_augment_transform); None: off

    @property
    def peak_lr(self) -> float:
        """The lr the warmup reaches: --lr, or lr_per_512 x batch_size / 512."""
        return self.lr if self.lr is not None else self.lr_per_512 * self.batch_size / 512

    def resolved_head_strategy(self) -> HeadStrategy | None:
        """The head strategy this config trains with (cdeit: 'linear' unless set), by kinds.resolve_head_strategy."""
        return resolve_head_strategy(self.student, self.head_strategy, "--head-strategy")

    def validate(self) -> TrainConfig:
        """One sentence per bad value, before anything runs."""
        if self.student not in STUDENTS:
            raise CdeitError(f"--student {self.student!r} is unknown; choose {', '.join(STUDENTS)}.")
        if self.distill not in DISTILLS:
            raise CdeitError(f"--distill {self.distill!r} is unknown; choose {', '.join(DISTILLS)}.")
        if self.model is not None:
            from cdeit.train.core.timm_run import check_model_run

            check_model_run(self)
        self.resolved_head_strategy()
        if self.student == "vit" and self.distill != "none" and self.model is None:
            raise CdeitError("the ViT baseline has no distillation token; use --distill none or --student deit/cdeit.")
        if self.distill != "none" and not self.teacher_cache:
            raise CdeitError(f"--distill {self.distill} needs --teacher-cache CACHE from `cdeit precompute-teacher`.")
        if not self.data:
            raise CdeitError("--data is required: the dataset directory from `cdeit data prepare`.")
        if not self.out:
            raise CdeitError("--out is required: the run directory to write checkpoints and metrics to.")
        for name in ("epochs", "batch_size", "eval_every", "eval_batch_size"):
            if not 1 <= getattr(self, name) <= MAX_COUNT[name]:
                raise CdeitError(
                    f"--{name.replace('_', '-')} must be in [1, {MAX_COUNT[name]:,}], not {getattr(self, name)}."
                )
        for name in ("lr_per_512", "min_lr", "warmup_lr", "lr", "weight_decay", "warmup_epochs", "tau"):
            if isinstance(getattr(self, name), int | float) and abs(getattr(self, name)) > MAX_RATE:
                raise CdeitError(f"--{name.replace('_', '-')} must be at most {MAX_RATE:g}, not {getattr(self, name)}.")
        for name in ("mixup_prob", "cutmix_prob", "erasing_prob", "label_smoothing", "lam", "dropout", "drop_path"):
            if not (_finite(getattr(self, name)) and 0 <= getattr(self, name) <= 1):
                raise CdeitError(f"--{name.replace('_', '-')} must be in [0, 1], not {getattr(self, name)}.")
        if self.mixup_prob + self.cutmix_prob > 1:
            raise CdeitError("--mixup-prob and --cutmix-prob must add up to at most 1.")
        if self.precision not in ("bf16", "fp32"):
            raise CdeitError(f"--precision {self.precision!r} is unknown; choose bf16 or fp32.")
        self._validate_numbers()
        self._validate_lambda()
        self._validate_align()
        self._validate_online()
        self._validate_temperature()
        self._validate_model()
        self._validate_start_and_logging()
        from cdeit.train.core.optim import check_training_options

        check_training_options(self)
        return self

    def _validate_start_and_logging(self) -> None:
        """--log-wandb needs wandb installed (--initial-checkpoint's file is checked when a new run starts: a resume
        no longer reads it)."""
        from cdeit.train.core.tracking import check_wandb

        if self.log_wandb:
            check_wandb()

    def _validate_model(self) -> None:
        """--model-kwargs: only the arguments a model file records (kinds.check_model_kwargs), and sizes with which
        the student builds and reads the dataset's images (built and run on the meta device)."""
        if not isinstance(self.model_kwargs, dict):
            raise CdeitError(f'--model-kwargs must be a JSON object such as {{"depth": 6}}, not {self.model_kwargs!r}.')
        if self.model is not None:  # checked by timm_run.check_model_run
            return
        check_model_kwargs(self.model_kwargs, "--model-kwargs key")
        if self.model_kwargs:
            from cdeit.train.core.models import check_student_builds

            check_student_builds(self.student, self.resolved_head_strategy(), self.model_kwargs, self.data)

    def _validate_numbers(self) -> None:
        """Every number of the recipe: finite, in range, one sentence each."""
        rules = (  # (field, accept, what it must be)
            ("lr_per_512", lambda v: v > 0, "a positive number"),
            ("weight_decay", lambda v: v >= 0, "zero or positive"),
            ("warmup_epochs", lambda v: v >= 0, "zero or positive"),
            ("min_lr", lambda v: v >= 0, "zero or positive"),
            ("warmup_lr", lambda v: v >= 0, "zero or positive"),
            ("tau", lambda v: v > 0, "a positive number"),
            ("seed", lambda v: 0 <= v < 2**31, "in [0, 2^31)"),
            ("workers", lambda v: v >= 1, "at least 1"),
        )
        for name, accept, what in rules:
            value = getattr(self, name)
            if not _finite(value) or not accept(value):
                raise CdeitError(f"--{name.replace('_', '-')} must be {what}, not {value}.")
        if self.clip_grad is not None and not (_finite(self.clip_grad) and self.clip_grad > 0):
            raise CdeitError(f"--clip-grad must be a positive gradient norm (or left off), not {self.clip_grad}.")
        for kind in ("mixup", "cutmix"):
            prob, alpha = getattr(self, f"{kind}_prob"), getattr(self, f"{kind}_alpha")
            if prob > 0 and not (_finite(alpha) and alpha > 0):
                raise CdeitError(
                    f"--{kind}-alpha must be positive when --{kind}-prob is {prob} (Beta(alpha, alpha)), not {alpha}."
                )

    def _validate_lambda(self) -> None:
        """--lambda weighs Eq. 4, 5 and 7; the losses that are plain averages (Eq. 6, strategy 1) refuse it."""
        if self.lam == LAMBDA_DEFAULT:
            return
        if self.distill == "none":
            raise CdeitError(f"--lambda {self.lam} weighs the teacher term, but --distill none has none; drop it.")
        if self.student == "cdeit" and (self.distill == "hard" or self.resolved_head_strategy() == "none"):
            loss = "Eq. 6 (hard)" if self.distill == "hard" else "strategy 1"
            raise CdeitError(
                f"--lambda {self.lam} does not enter CdeiT's {loss} loss, the plain average of the three tokens' "
                "losses (paper 3.3); drop it, or use --distill soft with --head-strategy linear or mlp (Eq. 7)."
            )

    def _validate_online(self) -> None:
        """--online-teacher rebuilds the cache's teacher; its two file options mean nothing without it."""
        if not self.online_teacher:
            for name in ("teacher_checkpoint", "teacher_module"):
                if getattr(self, name):
                    raise CdeitError(
                        f"--{name.replace('_', '-')} names the online teacher's files; add --online-teacher or drop it."
                    )
            return
        if self.distill == "none":
            raise CdeitError("--online-teacher runs a teacher to distil from, but --distill is none; drop it.")
        if self.align:
            raise CdeitError("--online-teacher gives the teacher's logits only; drop --align or train from the cache.")

    def _validate_temperature(self) -> None:
        t = self.teacher_temperature
        if isinstance(t, str) and t not in ("auto", "none"):
            raise CdeitError(f"--teacher-temperature {t!r} is unknown; choose auto, none or a positive number.")
        if not isinstance(t, str) and not (_finite(t) and t > 0):
            raise CdeitError(f"--teacher-temperature must be a positive number, auto or none, not {t}.")

    def _validate_align(self) -> None:
        for name, weight in self.align.items():
            if name not in ALIGN_TARGETS:
                raise CdeitError(f"--align {name!r} is unknown; choose from {', '.join(ALIGN_TARGETS)}.")
            if not (isinstance(weight, int | float) and 0 < weight < float("inf")):
                raise CdeitError(f"--align weight of {name} must be a positive number, not {weight!r}.")
        if self.align_metric not in ALIGN_METRICS:
            raise CdeitError(f"--align-metric {self.align_metric!r} is unknown; choose {' or '.join(ALIGN_METRICS)}.")
        if self.align and not self.teacher_cache:
            raise CdeitError(
                "--align needs --teacher-cache CACHE holding the teacher's feature targets "
                "(`cdeit precompute-teacher --targets logits,embedding,patches,attention`)."
            )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # Settings from a mapping (a run's config.json, a study file's tables): `check_mapping` checks names and types,
    # `from_mapping` also builds and validates the config. The study planner calls check_mapping for a partial
    # table, from_mapping for a run's whole settings; `accepts` and `type_name` are their type rules.
    @classmethod
    def check_mapping(cls, values: Mapping[str, Any], where: str) -> dict[str, Any]:
        """{field: value} from `values` whose keys are field names, option names (dashes) or `lambda`, each value
        of its field's type; a bad key or value is one sentence starting with `where` and naming the key."""
        hints = typing.get_type_hints(cls)
        checked = {}
        for key, value in values.items():
            name = ALIASES.get(key, str(key).replace("-", "_"))
            if name not in hints:
                raise CdeitError(
                    f"{where} has unknown key {key!r}; use `cdeit train` option names ({', '.join(hints)})."
                )
            if not accepts(value, hints[name]):
                raise CdeitError(f"{where} key {key!r} = {value!r} should be {type_name(hints[name])}.")
            checked[name] = value
        return checked

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str) -> TrainConfig:
        """The one way a mapping of settings becomes a TrainConfig: names and types checked (check_mapping), fields
        left out take their defaults, then validate()."""
        return cls(**cls.check_mapping(values, where)).validate()

    @classmethod
    def read_json(cls, path: str | Path, where: str | None = None) -> dict[str, Any]:
        """The settings of a JSON file (a run's config.json), names and types checked but not yet validated, for
        `--config FILE` whose options typed on the command line still override them."""
        from cdeit.common.atomic import read_json_object

        where = where or f"--config {path}"
        return cls.check_mapping(read_json_object(Path(path), where, "give a run's config.json"), where)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """The validated TrainConfig of a JSON file (a run's config.json)."""
        return cls.from_mapping(cls.read_json(path), f"--config {path}")
