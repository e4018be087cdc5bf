"""Any timm classifier trained by `cdeit train --model NAME`, in a form both stages share: the adapter the trainer
and evaluator drive (`TimmClassifier`), its file's metadata, and the one check of what such a file may ask timm for.

A model file comes from whoever ran the training, so its metadata is untrusted: it may name only a model timm has
registered (no `hf-hub:`, `local-dir:` or `.tag`, which make timm fetch weights), with keyword arguments that are
plain JSON values under names that cannot point timm at weights (no pretrained, checkpoint, file, url, hub, cache,
overlay; nothing ending in path or dir). The weights come from the file itself. `precompute-teacher --teacher
run:RUN_DIR` builds its teacher from here (common.teacher), so a run's model teaches with the run's own input size
and normalisation. Only functions that use torch import this module.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from cdeit.common.errors import CdeitError

if TYPE_CHECKING:
    import torch

CONFIG_KEY = "cdeit.model_config"  # the file's {"model_name", "kwargs"} (train/core/models.py writes the same key)
INPUT_KEY = "cdeit.input"  # the file's {"input_size": [3, H, W], "mean": [...], "std": [...]} on a 0..1 scale
RUN_PREFIX = "run:"
FORBIDDEN_WORDS = ("pretrained", "checkpoint", "file", "url", "hub", "cache", "overlay", "features_only")
FORBIDDEN_ENDS = ("path", "dir")  # checkpoint_path, cache_dir; drop_path_rate is a rate
MAX_TEXT = 64


def check_timm_name(name: Any, where: str) -> str:
    """`name` when timm has registered it (a bare architecture name); else one sentence starting with `where`."""
    import timm

    if not isinstance(name, str) or not name or ":" in name or "." in name or "/" in name or len(name) > 200:
        raise CdeitError(f"{where} {str(name)[:80]!r} is not a bare timm model name (no hub:, local-dir: or .tag).")
    if not timm.is_model(name):
        raise CdeitError(f"{where} {name!r} is not a model timm knows; see `timm.list_models()` for the names.")
    return name


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return len(value) <= MAX_TEXT
    if isinstance(value, list):
        return len(value) <= 64 and all(_plain(v) and not isinstance(v, list) for v in value)
    return False


def _loads_something(key: str) -> bool:
    return any(w in key for w in FORBIDDEN_WORDS) or key.endswith(FORBIDDEN_ENDS)


def check_timm_kwargs(kwargs: Any, where: str) -> dict[str, Any]:
    """`kwargs` when each key is a plain argument name that cannot load weights and each value plain JSON."""
    if not isinstance(kwargs, dict):
        raise CdeitError(f"{where} is not a JSON object of model arguments.")
    for key, value in kwargs.items():
        if not (isinstance(key, str) and key.isidentifier()) or _loads_something(key.lower()):
            raise CdeitError(
                f"{where} {str(key)[:80]!r} is not a model argument cdeit passes to timm (nothing that loads "
                "weights or files: the weights come from the run)."
            )
        if not _plain(value):
            raise CdeitError(f"{where} {key}={json.dumps(value, default=str)[:80]} is not a plain JSON value.")
    return dict(kwargs)


class TimmClassifier(nn.Module):
    """A timm classifier with the interface the trainer and evaluator drive (TokenViT's): one head, `cls`, and no
    prefix tokens (so no token diagnostics). `pretrained_cfg` holds the input the model was trained on."""

    token_names: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, name: str, kwargs: dict[str, Any], normalisation: dict[str, Any]):
        super().__init__()
        self.model, self.model_name, self.kwargs = model, name, dict(kwargs)
        self.return_heads = False
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {}) | {
            "input_size": tuple(normalisation["input_size"]),
            "mean": tuple(normalisation["mean"]),
            "std": tuple(normalisation["std"]),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "fixed_input_size": True,
        }
        model.pretrained_cfg = self.pretrained_cfg  # the teacher's preprocessing reads it through timm

    @property
    def num_classes(self) -> int:
        return int(self.model.num_classes)

    def set_return_heads(self, enable: bool = True) -> TimmClassifier:
        self.return_heads = enable
        return self

    def no_weight_decay(self) -> set[str]:
        nwd = getattr(self.model, "no_weight_decay", None)
        return {f"model.{n}" for n in nwd()} if callable(nwd) else set()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cls": self.model.forward_head(features)}  # (B, C)

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.forward_features(x))

    def combine(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs["cls"]

    def forward(self, x: torch.Tensor, features: tuple[str, ...] = ()) -> torch.Tensor | dict[str, torch.Tensor]:
        outputs = {"cls": self.model(x)}
        return outputs if self.return_heads else outputs["cls"]

    def model_config(self) -> dict[str, Any]:
        """Enough to rebuild this model: `timm.create_model(cfg['model_name'], **cfg['kwargs'])`."""
        return {"model_name": self.model_name, "kwargs": json.loads(json.dumps(self.kwargs))}

    def input_config(self) -> dict[str, Any]:
        """The input the model was trained on (the file's INPUT_KEY)."""
        cfg = self.pretrained_cfg
        return {"input_size": list(cfg["input_size"]), "mean": list(cfg["mean"]), "std": list(cfg["std"])}


def build_timm_classifier(name: str, kwargs: dict[str, Any], normalisation: dict[str, Any]) -> TimmClassifier:
    """`timm.create_model(name, **kwargs)` (random weights) in the adapter; a build error is one sentence."""
    import timm

    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CdeitError(f"--model {name} with --model-kwargs {json.dumps(kwargs)} does not build ({first}).") from None
    return TimmClassifier(model, name, kwargs, normalisation)


def _checked_input(raw: Any, path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
        cfg = None
    ok = isinstance(cfg, dict) and set(cfg) == {"input_size", "mean", "std"}
    ok = ok and isinstance(cfg["input_size"], list) and len(cfg["input_size"]) == 3
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 4096 for v in cfg["input_size"])
    for key in ("mean", "std"):
        ok = ok and isinstance(cfg[key], list) and len(cfg[key]) == 3
        ok = ok and all(isinstance(v, int | float) and math.isfinite(v) and (key == "mean" or v > 0) for v in cfg[key])
    if not ok:
        raise CdeitError(f"{path}: its {INPUT_KEY} metadata is not an input size, mean and std; train the model again.")
    return cfg


def load_timm_classifier(path: str | os.PathLike, device: str | torch.device = "cpu") -> TimmClassifier:
    """Rebuild a `--model` run's classifier from its safetensors file (weights, checked name and kwargs, input)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path), device="cpu")
        config = json.loads(meta[CONFIG_KEY])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise CdeitError(f"{path} is not a model file of a `cdeit train --model` run ({exc}).") from None
    if not isinstance(config, dict) or set(config) != {"model_name", "kwargs"}:
        raise CdeitError(f"{path}: its {CONFIG_KEY} metadata is not a cdeit model config; save the model again.")
    name = check_timm_name(config["model_name"], f"{path}: model")
    kwargs = check_timm_kwargs(config["kwargs"], f"{path}: model argument")
    model = build_timm_classifier(name, kwargs, _checked_input(meta.get(INPUT_KEY), path))
    try:
        model.model.load_state_dict(state, strict=True)  # the file holds timm's own keys (no adapter prefix)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or ["RuntimeError"])[0][:200]
        raise CdeitError(f"{path}: its weights do not fit the model its metadata describes ({first}).") from None
    return model.to(device).eval()


RUN_MODEL, RUN_CONFIG = "model.safetensors", "config.json"


def run_dir_of(spec: str) -> Path | None:
    """The run directory `--teacher` names (`run:RUN_DIR`, or a directory holding a run), else None."""
    explicit = spec.startswith(RUN_PREFIX)
    path = Path(spec.removeprefix(RUN_PREFIX))
    if not explicit and not (":" not in spec and path.is_dir()):
        return None
    missing = [f for f in (RUN_CONFIG, RUN_MODEL) if not (path / f).is_file()]
    if missing:
        raise CdeitError(
            f"--teacher {spec}: {path} holds no {missing[0]}, so it is not a finished `cdeit train --model` run; "
            "finish the run or pass its directory."
        )
    return path


def load_run_teacher(run_dir: Path) -> tuple[nn.Module, dict[str, str]]:
    """(the run's timm model with its weights and input config, its provenance: dir, model sha256, config JSON)."""
    from cdeit.common.atomic import read_json_object
    from cdeit.common.dataset import file_sha256

    config = read_json_object(run_dir / RUN_CONFIG, f"--teacher run:{run_dir}", "give a `cdeit train --model` run")
    if not config.get("model"):
        raise CdeitError(
            f"--teacher run:{run_dir} is a run of cdeit's {config.get('student')!r} student; a teacher run is one "
            "trained with `cdeit train --model NAME`."
        )
    classifier = load_timm_classifier(run_dir / RUN_MODEL)
    provenance = {"teacher_run": str(run_dir.resolve()), "teacher_run_sha256": file_sha256(run_dir / RUN_MODEL),
                  "teacher_run_config": json.dumps(config, sort_keys=True)}  # fmt: skip
    return classifier.model, provenance
