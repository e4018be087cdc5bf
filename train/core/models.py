"""Students: ViT, DeiT and CdeiT (32px, or a dataset's size through `sized_kwargs`), built on timm's VisionTransformer.

`import cdeit.train.core.models` registers `vit_tiny_patch4_32`, `deit_tiny_distilled_patch4_32` and
`cdeit_tiny_patch4_32`, so `timm.create_model("cdeit_tiny_patch4_32", head_strategy="linear")` works.
All three are one class, `TokenViT` (train/core/token_vit.py); as in timm's deit.py, each registered function
holds the sizes. `Normalise` is the students' input normalisation (uint8 images on the device); a student's
file is safetensors with its model config in the metadata (`save_safetensors`, `load_safetensors`). The kinds
and the model arguments a student takes are declared in train/core/kinds.py. See docs/students.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from cdeit.common.atomic import write_safetensors
from cdeit.common.dataset import CLASSES, DEFAULT_IMAGE_SIZE
from cdeit.common.errors import CdeitError
from cdeit.train.core.kinds import MODEL_NAMES, HeadStrategy, StudentKind, check_model_kwargs, resolve_head_strategy
from cdeit.train.core.token_vit import TokenViT

__all__ = [
    "MODEL_NAMES",
    "Normalise",
    "TokenViT",
    "build_student",
    "load_safetensors",
    "read_classes",
    "save_safetensors",
]
# CIFAR-10 training-set statistics: the students' normalisation (`Normalise.for_model` reads pretrained_cfg).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CONFIG_KEY = "cdeit.model_config"  # safetensors metadata entry holding model_config() as JSON
CLASSES_KEY = "cdeit.classes"  # safetensors metadata entry holding the class names (JSON list), when known
PATCH_GRID = 8  # the students' patch grid side up to 128px: patch 4 at 32px, 8 at 64px (docs/students.md)
MAX_PATCH = 16  # timm's ViT patch above 128px: 16 at 224px (a 14x14 grid; token targets pool it to 8x8)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": len(CLASSES),
        "input_size": (3, 32, 32),
        "fixed_input_size": True,
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg() for name in MODEL_NAMES.values()})


def _create(kind: StudentKind, pretrained: bool, **kwargs: Any) -> TokenViT:
    """The student `kind` through timm's builder (its pretrained_cfg gives img_size 32 and num_classes 10; another
    img_size given is also its pretrained_cfg's input_size, so what reads the config sees the size it takes)."""
    variant = MODEL_NAMES[kind]
    if pretrained:
        raise CdeitError(f"{variant} has no pretrained weights; train one with `cdeit train` and load its file.")
    size = kwargs.get("img_size", DEFAULT_IMAGE_SIZE)
    h, w = size if isinstance(size, list | tuple) else (size, size)
    overlay = (kwargs.pop("pretrained_cfg_overlay", None) or {}) | {"input_size": (3, int(h), int(w))}
    return build_model_with_cfg(TokenViT, variant, pretrained=False, kind=kind, pretrained_cfg_overlay=overlay,
                                **kwargs)  # fmt: skip


def patch_size_for(image_size: int) -> int:
    """The students' patch size for S-pixel images: S / 8 up to 128px (an 8x8 grid, as CIFAR's patch 4), 16 above
    (timm's ViT patch: 16 at 224px). 32 -> 4, 64 -> 8, 224 -> 16."""
    patch = min(image_size // PATCH_GRID, MAX_PATCH)
    if patch < 1 or image_size % patch:
        raise CdeitError(
            f"the dataset's {image_size}px images have no default patch size (S / 8 up to 128px, 16 above, dividing "
            f"S); give one with --model-kwargs '{{\"patch_size\": P}}', P dividing {image_size}."
        )
    return patch


def sized_kwargs(kwargs: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The student's kwargs for a dataset of `image_size` px images: img_size and the rule's patch size unless given
    (nothing added at 32px, which the registered students are); a given img_size must be the dataset's."""
    given = kwargs.get("img_size", image_size)
    if (given if isinstance(given, int) else tuple(given)) not in (image_size, (image_size, image_size)):
        raise CdeitError(
            f"--model-kwargs img_size {json.dumps(given)} is not the dataset's image size {image_size}; drop it "
            "(the student takes the dataset's size)."
        )
    if image_size == DEFAULT_IMAGE_SIZE:
        return dict(kwargs)
    return {"img_size": image_size, "patch_size": patch_size_for(image_size)} | dict(kwargs)


@register_model
def vit_tiny_patch4_32(pretrained: bool = False, **kwargs: Any) -> TokenViT:
    """Baseline ViT-Tiny at 32px: patch 4, embedding 192, 12 blocks, 3 heads, class token, linear head."""
    model_args = dict(patch_size=4, embed_dim=192, depth=12, num_heads=3, drop_path_rate=0.1)
    return _create("vit", pretrained, **dict(model_args, **kwargs))


@register_model
def deit_tiny_distilled_patch4_32(pretrained: bool = False, **kwargs: Any) -> TokenViT:
    """DeiT-Tiny at 32px with class and distillation tokens; inference averages their heads."""
    model_args = dict(patch_size=4, embed_dim=192, depth=12, num_heads=3, drop_path_rate=0.1)
    return _create("deit", pretrained, **dict(model_args, **kwargs))


@register_model
def cdeit_tiny_patch4_32(pretrained: bool = False, **kwargs: Any) -> TokenViT:
    """CdeiT-Tiny at 32px: class, distillation and corruption tokens; `head_strategy` none | linear | mlp."""
    model_args = dict(patch_size=4, embed_dim=192, depth=12, num_heads=3, drop_path_rate=0.1)
    return _create("cdeit", pretrained, **dict(model_args, **kwargs))


def build_student(kind: StudentKind, head_strategy: HeadStrategy | None = None, **kwargs: Any) -> TokenViT:
    """One of the three students by kind; kwargs (depth, drop_path_rate, ...) go to the model."""
    resolve_head_strategy(kind, head_strategy)
    return timm.create_model(MODEL_NAMES[kind], head_strategy=head_strategy, **kwargs)


class Normalise(nn.Module):
    """uint8 NCHW images on the device -> float, normalised with the student's mean and std.

    The loaders hand over raw uint8 pixels; normalising on the device, batched, keeps the loader cheap. The
    statistics are the student's own (`pretrained_cfg`), so a model file carries what its input needs.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str = "cpu") -> None:
        super().__init__()
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.inv_std = 1.0 / (torch.tensor(std, device=device).view(1, 3, 1, 1) * 255)

    @classmethod
    def for_model(cls, model: nn.Module, device: torch.device | str) -> Normalise:
        """The normalisation a student (or any timm model) was built for, from its pretrained_cfg."""
        cfg = unwrap(model).pretrained_cfg
        return cls(cfg["mean"], cfg["std"], device)

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        return (images_u8.float() - self.mean) * self.inv_std  # (B, 3, S, S)


def unwrap(model: nn.Module) -> TokenViT:
    """The TokenViT (or `--model` TimmClassifier) inside a torch.compile and/or DistributedDataParallel wrapper."""
    from cdeit.common.run_model import TimmClassifier

    while not isinstance(model, TokenViT | TimmClassifier):
        inner = getattr(model, "_orig_mod", None)
        inner = getattr(model, "module", None) if inner is None else inner
        if not isinstance(inner, nn.Module):
            raise CdeitError(f"{type(model).__name__} is not a cdeit student; build one with build_student().")
        model = inner
    return model


def weights_module(student: nn.Module) -> nn.Module:
    """The module whose state_dict a weights file holds: a `--model` run's timm model itself (timm's own keys, no
    wrapper prefix), else the student."""
    return getattr(student, "model", student) if hasattr(student, "input_config") else student


def class_heads(student: nn.Module) -> tuple[str, ...]:
    """Key prefixes of the class-space heads of `weights_module(student)` (fresh when the class count differs): the
    students' heads, or the classifier timm's pretrained_cfg names for a `--model` run (e.g. `fc.` or `head.fc.`)."""
    if not hasattr(student, "input_config"):
        return ("head.", "head_dist.", "corr_to_cls.")
    classifier = student.pretrained_cfg.get("classifier") or "head"
    names = classifier if isinstance(classifier, list | tuple) else (classifier,)
    return tuple(f"{n}." for n in names)


def save_safetensors(model: nn.Module, path: str | os.PathLike, classes: list[str] | None = None) -> Path:
    """Write the weights, model_config() and the class names (if given) to a safetensors file, atomically, so the
    file alone names what it predicts; returns the path."""
    student = unwrap(model)
    weights = weights_module(student)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.state_dict().items()}
    metadata = {"format": "pt", CONFIG_KEY: json.dumps(student.model_config())}
    if hasattr(student, "input_config"):  # a --model run's classifier: the input it was trained on
        from cdeit.common.run_model import INPUT_KEY

        metadata[INPUT_KEY] = json.dumps(student.input_config())
    if classes is not None:
        metadata[CLASSES_KEY] = json.dumps(list(classes))
    return write_safetensors(path, tensors, metadata)  # sorted metadata: identical inputs, identical bytes


def read_classes(path: str | os.PathLike) -> list[str] | None:
    """The class names a student file carries (CLASSES_KEY), or None for a file written without them."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(CLASSES_KEY)
        classes = json.loads(raw) if raw is not None else None
    except (SafetensorError, OSError, json.JSONDecodeError):
        return None
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        return None
    return classes


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> TokenViT:
    """Rebuild a student from a file written by save_safetensors, in eval mode on `device`."""
    path = Path(path)
    if not path.is_file():
        raise CdeitError(f"model file {path} does not exist; check the path or train a model with `cdeit train`.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(CONFIG_KEY)
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise CdeitError(f"{path} is not a readable safetensors file ({exc}); save it again with cdeit.") from None
    if raw is None:
        raise CdeitError(f"{path} holds no {CONFIG_KEY} entry, so it was not written by cdeit's save_safetensors.")
    if (
        isinstance(_model_name(raw), str) and _model_name(raw) not in MODEL_NAMES.values()
    ):  # a `cdeit train --model NAME` run: its checks are its own
        from cdeit.common.run_model import load_timm_classifier

        return load_timm_classifier(path, device)
    name, kwargs = checked_model_config(raw, path)
    try:
        with torch.device("meta"):  # shapes first, without memory: metadata asking for a huge model costs nothing
            shapes = {k: tuple(v.shape) for k, v in timm.create_model(name, **kwargs).state_dict().items()}
        if shapes != {k: tuple(v.shape) for k, v in state.items()}:
            raise ValueError("tensor names or shapes differ")
        model = timm.create_model(name, **kwargs)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError, AssertionError) as exc:  # sizes that do not build, other weights
        raise CdeitError(
            f"{path}: its weights do not fit the model its metadata describes ({_first_line(exc)})."
        ) from None
    return model.to(device).eval()


def check_student_builds(
    student: StudentKind, head_strategy: HeadStrategy | None, kwargs: dict[str, Any], data: str | None = None
) -> None:
    """Refuse `--model-kwargs` with which the student cannot be built (heads that do not divide the width) or
    cannot read the dataset's images (another img_size, in_chans): the dataset's size is read from DATA's manifest
    when there is one (32 otherwise); the student is built and run on the meta device, which costs no memory and
    no initialisation, before anything is written."""
    kwargs = sized_kwargs(kwargs, _data_image_size(data))
    size = kwargs.get("img_size", DEFAULT_IMAGE_SIZE)
    height, width, channels = (*size, 3) if isinstance(size, list) else (size, size, 3)
    try:
        with torch.device("meta"):
            model = build_student(student, head_strategy, **kwargs)
    except (AssertionError, ValueError, TypeError, RuntimeError) as exc:
        heads = " (num_heads must divide embed_dim)" if "divisible" in str(exc) else ""
        raise CdeitError(f"--model-kwargs {json.dumps(kwargs)} builds no {student} student: {_first_line(exc)}{heads}; "
                         "change them.") from None  # fmt: skip
    try:
        with torch.device("meta"):
            model.forward_heads(torch.zeros(1, channels, height, width))
    except (AssertionError, ValueError, TypeError, RuntimeError) as exc:
        raise CdeitError(
            f"--model-kwargs {json.dumps(kwargs)} builds a {student} student that cannot read the dataset's "
            f"{height}x{width}x{channels} images ({_first_line(exc)}); change them."
        ) from None


def _data_image_size(data: str | None) -> int:
    """The image size of dataset `data` when its manifest reads, else 32 (the trainer names a bad dataset later)."""
    from cdeit.common.dataset import MANIFEST, image_size, load_manifest

    if not data or not (Path(data) / MANIFEST).is_file():
        return DEFAULT_IMAGE_SIZE
    try:
        return image_size(load_manifest(data))
    except CdeitError:
        return DEFAULT_IMAGE_SIZE


def checked_model_config(raw: str, path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(model name, kwargs) from a file's CONFIG_KEY metadata, checked by kinds.check_model_kwargs and
    resolve_head_strategy: one sentence naming the file and the entry, and nothing passed on that is not allowed."""
    try:
        config = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        config = None
    if (
        not isinstance(config, dict)
        or set(config) != {"model_name", "kwargs"}
        or not isinstance(config["kwargs"], dict)
    ):
        raise CdeitError(f"{path}: its {CONFIG_KEY} metadata is not a cdeit model config; save the model again.")
    name, kwargs = config["model_name"], config["kwargs"]
    kinds = {model_name: kind for kind, model_name in MODEL_NAMES.items()}
    if name not in kinds:
        raise CdeitError(
            f"{path} names model {str(name)[:80]!r}, not one of cdeit's students ({', '.join(MODEL_NAMES.values())}); "
            "cdeit loads only its own models from a file."
        )
    check_model_kwargs(kwargs, f"{path}: model argument", training=False)
    if kinds[name] != "cdeit":  # cdeit's default strategy is its own config's business: only check the others
        resolve_head_strategy(kinds[name], kwargs.get("head_strategy"), f"{path}: head_strategy")
    return name, kwargs


def _model_name(raw: str) -> Any:
    try:
        config = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        return None
    return config.get("model_name") if isinstance(config, dict) else None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
