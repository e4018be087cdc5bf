"""Building the frozen teacher: a timm model with pretrained, checkpoint or random weights, and its weights hash."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdeit.common.errors import CdeitError
from cdeit.precompute.preprocess import Preprocessing, preprocessing_for

if TYPE_CHECKING:
    import torch
    from torch import nn

DEFAULT_TEACHER = "deit3_small_patch16_224.fb_in22k_ft_in1k"
WRAPPER_KEYS = ("model", "state_dict", "model_state", "module")  # checkpoints often nest the state dict


@dataclass
class Teacher:
    """A frozen timm model in eval mode and what identifies it in a cache."""

    model: nn.Module
    name: str
    weights_hash: str  # sha256 of every tensor but the classifier's, which cdeit replaces
    weights_source: str
    random_weights: bool
    num_features: int
    preprocessing: Preprocessing
    head_loaded: bool  # the classifier holds trained (or deliberately random) weights, not timm's fresh init

    def classifier_keys(self) -> list[str]:
        return [k for k in self.model.state_dict() if is_classifier_key(self.model, k)]


def build_teacher(
    name: str = DEFAULT_TEACHER,
    checkpoint: str | os.PathLike | None = None,
    random_weights: bool = False,
    seed: int = 0,
) -> Teacher:
    """The teacher with timm's pretrained weights (hub), a checkpoint's, or random ones (seeded, for benchmarks)."""
    import timm
    import torch
    from timm.layers import set_fused_attn

    from cdeit.common.cache import tensor_hash

    if checkpoint is not None and random_weights:
        raise CdeitError("--checkpoint and --random-weights exclude each other; pass one of them.")
    if not timm.is_model(name):
        raise CdeitError(f"timm has no model named {name!r}; see `timm.list_models()` for the names it knows.")
    set_fused_attn(True)  # scaled_dot_product_attention: flash / memory-efficient kernels on CUDA
    torch.manual_seed(seed)  # random weights (and any head timm leaves untrained) are reproducible
    head_loaded = True
    if checkpoint is not None:
        model, source, head_loaded = _from_checkpoint(name, Path(checkpoint))
    elif random_weights:
        model, source = timm.create_model(name, pretrained=False), f"random (seed {seed})"
    else:
        model, source = _from_hub(name), "pretrained (timm hub)"
    model.eval().requires_grad_(False)
    backbone = {k: v for k, v in model.state_dict().items() if not is_classifier_key(model, k)}
    return Teacher(
        model=model,
        name=name,
        weights_hash=tensor_hash(backbone),
        weights_source=source,
        random_weights=random_weights,
        num_features=int(model.num_features),
        preprocessing=preprocessing_for(model),
        head_loaded=head_loaded,
    )


def _from_hub(name: str) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=True)
    except Exception as exc:  # hub, network and cache errors come in many types
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CdeitError(
            f"could not load the pretrained weights of {name} from the timm hub ({reason}); "
            "connect to the network or pass --checkpoint FILE (.safetensors or .pth)."
        ) from None


def _from_checkpoint(name: str, path: Path) -> tuple[nn.Module, str, bool]:
    import timm

    state = load_state_dict(path)
    probe = timm.create_model(name, pretrained=False)
    head = classifier_names(probe)
    weight = state.get(f"{head[0]}.weight") if head else None
    num_classes = int(weight.shape[0]) if weight is not None and weight.ndim == 2 else probe.num_classes
    model = (
        probe
        if num_classes == probe.num_classes
        else timm.create_model(name, pretrained=False, num_classes=num_classes)
    )
    check_fits(model, state, path)
    model.load_state_dict(state, strict=False)  # check_fits allows only a missing classifier
    head_loaded = all(k in state for k in model.state_dict() if is_classifier_key(model, k))
    return model, f"checkpoint {path.name}", head_loaded


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


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a checkpoint whose keys or shapes differ from the model's (a missing classifier alone is fine)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not is_classifier_key(model, k)]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = [
        f"{label} {_listing(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
        if keys
    ]
    if parts:
        name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
        raise CdeitError(
            f"checkpoint {path} does not fit {name}: {'; '.join(parts)}; pass the checkpoint of this --teacher."
        )


def _listing(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (and {len(keys) - limit} more)" if len(keys) > limit else shown


def own_head(teacher: Teacher) -> dict[str, torch.Tensor] | None:
    """The teacher's own classifier as {weight, bias} when it is one linear layer, else None."""
    from torch import nn

    layer = teacher.model.get_classifier()
    if not teacher.head_loaded or not isinstance(layer, nn.Linear) or layer.bias is None:
        return None
    return {"weight": layer.weight.detach().float().clone(), "bias": layer.bias.detach().float().clone()}
