"""A teacher's weights from a file (`--checkpoint FILE`): read as tensors only, loaded through timm, checked.

timm loads the file into the architecture (`pretrained_cfg_overlay=dict(file=...)`, so its `checkpoint_filter_fn`
maps official layouts). A user's `@register_model` function that builds a plain `nn.Module` and ignores
`pretrained` (the usual research code) leaves its tensors as created: the file is then loaded with timm's own
`load_checkpoint` and the filter its module defines (`checkpoint_filter_fn`, as timm's model files name it). Either
way the keys and shapes must fit, the classifier alone may be missing, and a misfit is one sentence naming the key.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdeit.common.console import console
from cdeit.common.errors import CdeitError

if TYPE_CHECKING:
    import torch
    from torch import nn

# timm's load_state_dict picks EMA weights first, then these; the pre-read mirrors it so both see the same tensors
WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "model_state", "module")


def architecture(model: nn.Module, name: str) -> str:
    """The registered architecture name (no tag, no hf-hub:/local-dir: source), as timm's pretrained_cfg has it."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or name.split(".")[0])


def create_teacher_model(name: str, what: str, **kwargs: Any) -> nn.Module:
    """timm.create_model, with any failure as one sentence."""
    import timm

    try:
        return timm.create_model(name, **kwargs)
    except Exception as exc:  # hub, network, config and load errors come in many types
        raise CdeitError(f"timm could not build {name} {what} ({reason(exc)}).") from None


def reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def from_checkpoint(name: str, path: Path) -> tuple[nn.Module, str, bool]:
    """Load FILE through timm (overlay file + the architecture's filter); a missing classifier alone is allowed."""
    state = load_state_dict(path)  # refuses pickles and non-tensors with one sentence, before timm reads it
    probe = create_teacher_model(name, "", pretrained=False)
    heads = classifier_names(probe)
    weight = state.get(f"{heads[0]}.weight") if heads else None
    num_classes = int(weight.shape[0]) if weight is not None and weight.ndim == 2 else int(probe.num_classes)
    _say_missing_batch_counts(probe, state, path)
    overlay = {"file": str(path.resolve()), "num_classes": num_classes}
    kwargs = {"pretrained": True, "pretrained_cfg_overlay": overlay, "num_classes": num_classes}
    try:
        model = _load_through_timm(name, path, **kwargs)
        head_loaded = True
    except _LoadMismatch as mismatch:
        missing, unexpected, shapes = mismatch.problems
        allowed = [k for k in missing if is_classifier_key(probe, k) or k.endswith(".num_batches_tracked")]
        if unexpected or shapes or len(allowed) < len(missing):
            unfit = [k for k in missing if k not in allowed]
            raise _does_not_fit(probe, name, path, unfit, unexpected, shapes) from None
        model = _load_through_timm(name, path, pretrained_strict=False, **kwargs)
        head_loaded = not any(is_classifier_key(probe, k) for k in missing)
    if _ignored_weights(model, state):  # a plain nn.Module entrypoint: timm's load_checkpoint loads the file
        head_loaded = _load_plain(model, name, path)
    return model, f"checkpoint {path.name}", head_loaded


class _LoadMismatch(Exception):
    def __init__(self, problems: tuple[list[str], list[str], list[str]]):
        super().__init__("state dict does not fit")
        self.problems = problems


def _load_through_timm(name: str, path: Path, **kwargs: Any) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as exc:
        problems = load_problems(str(exc))
        if problems is None:
            raise CdeitError(f"timm could not load checkpoint {path} into {name} ({reason(exc)}).") from None
        raise _LoadMismatch(problems) from None
    except Exception as exc:  # a filter fn meeting a foreign layout raises KeyError, IndexError, ...
        raise CdeitError(
            f"timm could not load checkpoint {path} into {name} ({type(exc).__name__}: {reason(exc)}); "
            "pass the checkpoint of this --teacher."
        ) from None


SIZE_MISMATCH = re.compile(
    r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[(.*?)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[(.*?)\]\)"
)


def load_problems(message: str) -> tuple[list[str], list[str], list[str]] | None:
    """(missing, unexpected, shape mismatches) from torch's `load_state_dict` error, or None for another error."""
    if "Error(s) in loading state_dict" not in message:
        return None
    missing: list[str] = []
    unexpected: list[str] = []
    shapes: list[str] = []
    for line in (part.strip() for part in message.splitlines()):
        if line.startswith("Missing key(s) in state_dict:"):
            missing = re.findall(r'"([^"]+)"', line)
        elif line.startswith("Unexpected key(s) in state_dict:"):
            unexpected = re.findall(r'"([^"]+)"', line)
        elif match := SIZE_MISMATCH.match(line):
            shapes.append(f"{match[1]} ({match[2]}) vs ({match[3]})")
    return missing, unexpected, shapes


def _does_not_fit(
    model: nn.Module, name: str, path: Path, missing: list[str], unexpected: list[str], shapes: list[str]
) -> CdeitError:
    parts = [
        f"{label} {_listing(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if keys
    ]
    return CdeitError(
        f"checkpoint {path} does not fit {architecture(model, name)} (after timm's checkpoint filter): "
        f"{'; '.join(parts)}; pass the checkpoint of this --teacher."
    )


def _ignored_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether the entrypoint ignored pretrained=True: a model not built by timm's builder (no pretrained_cfg), or
    no tensor of the file in the model as created."""
    import torch

    if getattr(model, "pretrained_cfg", None) is None:
        return True
    held = model.state_dict()
    comparable = [k for k, v in state.items() if k in held and held[k].shape == v.shape and v.is_floating_point()]
    return bool(comparable) and not any(torch.equal(held[k], state[k].to(held[k].dtype)) for k in comparable)


def _load_plain(model: nn.Module, name: str, path: Path) -> bool:
    """Load FILE with timm's `load_checkpoint` and the model module's `checkpoint_filter_fn` (if it has one); keys
    and shapes must fit, a missing classifier alone is allowed. Returns whether the classifier was loaded."""
    from timm.models import load_checkpoint

    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    try:
        result = load_checkpoint(model, str(path), strict=False, filter_fn=filter_fn, weights_only=True)
    except RuntimeError as exc:  # shape mismatches raise even when not strict
        problems = load_problems(str(exc))
        if problems is None:
            raise CdeitError(f"timm could not load checkpoint {path} into {name} ({reason(exc)}).") from None
        raise _does_not_fit(model, name, path, *problems) from None
    except Exception as exc:  # a module's filter meeting a foreign layout raises KeyError, IndexError, ...
        raise CdeitError(
            f"timm could not load checkpoint {path} into {name} ({type(exc).__name__}: {reason(exc)}); "
            "pass the checkpoint of this --teacher."
        ) from None
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    unfit = [k for k in missing if not (is_classifier_key(model, k) or k.endswith(".num_batches_tracked"))]
    if unfit or unexpected:
        raise _does_not_fit(model, name, path, unfit, unexpected, [])
    return not any(is_classifier_key(model, k) for k in missing)


def _say_missing_batch_counts(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Say so when a checkpoint predates BatchNorm's num_batches_tracked buffers (torch then sets them to 0)."""
    expected = [k for k in model.state_dict() if k.endswith(".num_batches_tracked")]
    absent = [k for k in expected if k not in state]
    if absent:
        console.print(
            f"checkpoint {path.name} has no num_batches_tracked for {len(absent)} of {len(expected)} BatchNorm "
            "layers (saved before PyTorch tracked them); they are set to 0, which changes no output in eval mode."
        )


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or of a `.pth` loaded with weights_only=True (no pickled objects)."""
    import torch

    if not path.is_file():
        raise CdeitError(f"checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        kind = "holds pickled Python objects" if "global" in str(exc).lower() else "is not a plain PyTorch checkpoint"
        raise CdeitError(
            f"checkpoint {path} {kind}, which cdeit refuses to load (weights_only=True); "
            "save a plain state dict of tensors or convert it to .safetensors."
        ) from None
    return _unwrap(state, path)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CdeitError(f"checkpoint {path} is not a valid .safetensors file ({exc}).") from None


def _unwrap(state: Any, path: Path) -> dict[str, torch.Tensor]:
    import torch

    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CdeitError(f"checkpoint {path} does not hold a state dict of tensors; save `model.state_dict()`.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def classifier_names(model: nn.Module) -> list[str]:
    """The module names of the model's classifier(s) from timm's pretrained config ('head' for ViTs)."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    return [names] if isinstance(names, str) else list(names)


def is_classifier_key(model: nn.Module, key: str) -> bool:
    return any(key.startswith(f"{name}.") for name in classifier_names(model))


def _listing(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (and {len(keys) - limit} more)" if len(keys) > limit else shown
