"""Building the frozen teacher through timm's own machinery, and what identifies its weights in a cache.

`--teacher` is anything `timm.create_model` accepts: `name`, `name.tag`, `hf-hub:org/repo`, `local-dir:/path`.
Weights come from, in this order: `--checkpoint FILE` (loaded by timm with `pretrained_cfg_overlay=dict(file=...)`,
so the architecture's `checkpoint_filter_fn` maps official layouts such as facebookresearch DeiT-III), the local
Hugging Face cache (no network), the hub itself, or `--random-weights`. `--teacher-module` imports user code that
registers its own model with timm's `@register_model` before the name is looked up. Files are safetensors or
`.pth` read with `weights_only=True`: pickled Python objects are never loaded. docs/precompute.md has the recipes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cdeit.common.console import console
from cdeit.common.errors import CdeitError
from cdeit.common.hub import DEFAULT_TEACHER, cached_snapshot, cached_weights, hub_cache_dir, hub_offline
from cdeit.common.preprocess import Preprocessing, preprocessing_for
from cdeit.common.teacher_weights import architecture, create_teacher_model, from_checkpoint, is_classifier_key, reason

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["DEFAULT_TEACHER", "Teacher", "TeacherModule", "build_teacher", "import_teacher_module", "own_head"]

TEACHER_FORMS = (
    "a timm name (deit3_small_patch16_224), a name.tag (deit3_small_patch16_224.fb_in22k_ft_in1k), "
    "hf-hub:org/repo (from the hub, or from the local Hugging Face cache without network), "
    "local-dir:/path (a folder with timm's config.json and weights), or the name of a model that "
    "--teacher-module registers"
)


@dataclass(frozen=True)
class TeacherModule:
    """User code imported for its `@register_model` teachers: its module name, file and the file's sha256."""

    name: str
    path: Path
    sha256: str


@dataclass
class Teacher:
    """A frozen timm model in eval mode and what identifies it in a cache."""

    model: nn.Module
    name: str  # the architecture (pretrained_cfg["architecture"]): the same for hub, file and local-dir weights
    weights_hash: str  # sha256 of every tensor the model holds but the classifier's, which cdeit replaces
    weights_source: str  # where the weights came from, in words (the --teacher spelling included)
    random_weights: bool
    num_features: int
    preprocessing: Preprocessing
    head_loaded: bool  # the classifier holds trained (or deliberately random) weights, not timm's fresh init
    module: TeacherModule | None = None
    run: dict[str, str] | None = None  # a `cdeit train --model` run: dir, model sha256, config (common.run_model)


def build_teacher(
    name: str = DEFAULT_TEACHER,
    checkpoint: str | Path | None = None,
    random_weights: bool = False,
    seed: int = 0,
    module: str | None = None,
) -> Teacher:
    """The teacher with a checkpoint's weights, the HF cache's, the hub's, or random ones (seeded, for benchmarks)."""
    import torch
    from timm.layers import set_fused_attn

    from cdeit.common.cache import tensor_hash

    if checkpoint is not None and random_weights:
        raise CdeitError("--checkpoint and --random-weights exclude each other; pass one of them.")
    from cdeit.common.run_model import run_dir_of

    run_dir = run_dir_of(name)
    if run_dir is not None:
        return _from_run(run_dir, checkpoint, random_weights, module)
    imported = import_teacher_module(module) if module else None
    source = parse_teacher(name)
    if checkpoint is not None and source is not None:
        raise CdeitError(
            f"--checkpoint loads weights into a timm name, but --teacher {name} brings its own weights ({source}:); "
            "pass the architecture's name (its config.json `architecture`) with --checkpoint, or drop --checkpoint."
        )
    set_fused_attn(True)  # scaled_dot_product_attention: flash / memory-efficient kernels on CUDA
    torch.manual_seed(seed)  # random weights (and any head timm leaves untrained) are reproducible
    head_loaded = True
    if checkpoint is not None:
        model, where, head_loaded = from_checkpoint(name, Path(checkpoint))
    elif random_weights:
        model, where = create_teacher_model(name, "with random weights", pretrained=False), f"random (seed {seed})"
    else:
        model, where = _pretrained(name, source)
    model.eval().requires_grad_(False)
    backbone = {k: v for k, v in model.state_dict().items() if not is_classifier_key(model, k)}
    return Teacher(
        model=model,
        name=architecture(model, name),
        weights_hash=tensor_hash(backbone),
        weights_source=where,
        random_weights=random_weights,
        num_features=int(model.num_features),
        preprocessing=preprocessing_for(model),
        head_loaded=head_loaded,
        module=imported,
    )


def _from_run(run_dir: Path, checkpoint: str | Path | None, random_weights: bool, module: str | None) -> Teacher:
    """The classifier of a `cdeit train --model` run, with the run's weights, input size and normalisation."""
    from cdeit.common.cache import tensor_hash
    from cdeit.common.run_model import load_run_teacher

    given = [o for o, v in (("--checkpoint", checkpoint), ("--random-weights", random_weights),
                            ("--teacher-module", module)) if v]  # fmt: skip
    if given:
        raise CdeitError(f"--teacher run:{run_dir} brings the run's own model and weights; drop {given[0]}.")
    model, run = load_run_teacher(run_dir)
    model.eval().requires_grad_(False)
    backbone = {k: v for k, v in model.state_dict().items() if not is_classifier_key(model, k)}
    return Teacher(
        model=model,
        name=architecture(model, run["teacher_run"]),
        weights_hash=tensor_hash(backbone),
        weights_source=f"run {run['teacher_run']} (model.safetensors {run['teacher_run_sha256']})",
        random_weights=False,
        num_features=int(model.num_features),
        preprocessing=preprocessing_for(model),
        head_loaded=True,
        run=run,
    )


# --------------------------------------------------------------------------------------------- names and modules


def parse_teacher(name: str) -> str | None:
    """Check `--teacher` the way timm.create_model reads it; returns its source (hf-hub, local-dir) or None."""
    import timm
    import timm.models

    try:
        source, model_id = timm.models.parse_model_name(name)
    except ValueError as exc:
        raise CdeitError(f"--teacher {name!r} is not a name timm accepts ({exc}); use {TEACHER_FORMS}.") from None
    if source == "local-dir" and not (Path(model_id) / "config.json").is_file():
        raise CdeitError(
            f"--teacher {name}: {model_id} holds no config.json; a local-dir: folder needs timm's config.json "
            "beside the weights (timm.models.save_for_hf writes both)."
        )
    if source is None:
        arch, tag = timm.models.split_model_name_tag(model_id)
        if not timm.is_model(arch):
            raise CdeitError(
                f"timm has no model named {arch!r}; see `timm.list_models()` for the names it knows, "
                "or pass --teacher-module FILE.py whose @register_model defines it."
            )
        if tag and not _has_tag(model_id):
            raise CdeitError(
                f"timm's {arch} has no pretrained tag {tag!r}; `timm.list_pretrained('{arch}*')` lists them."
            )
    return source


def _has_tag(name: str) -> bool:
    import timm.models

    try:
        return timm.models.get_pretrained_cfg(name) is not None
    except RuntimeError:  # timm: "Invalid pretrained tag (...) for ..."
        return False


def import_teacher_module(spec: str) -> TeacherModule:
    """Import `FILE.py` or `package.module` so its `@register_model` functions join timm's registry."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise CdeitError(f"--teacher-module {spec} does not exist; pass a .py file or an importable module name.")
        return _import_file(path.resolve())
    try:
        module = importlib.import_module(spec)
    except ImportError as exc:
        raise CdeitError(f"--teacher-module {spec} could not be imported ({exc}); pass a .py file or a module on "
                         "PYTHONPATH.") from None  # fmt: skip
    file = Path(module.__file__ or "")
    return TeacherModule(spec, file, _sha256(file) if file.is_file() else "")


def _import_file(path: Path) -> TeacherModule:
    digest = _sha256(path)
    stem = re.sub(r"\W", "_", path.stem)
    key = f"cdeit_teacher_module_{stem}_{digest.removeprefix('sha256:')[:12]}"  # one module per file content
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # timm's @register_model looks its module up in sys.modules
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[key]
            raise CdeitError(f"--teacher-module {path} failed to import ({type(exc).__name__}: {exc}).") from None
    return TeacherModule(path.stem, path, digest)


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------- weights


def _pretrained(name: str, source: str | None) -> tuple[nn.Module, str]:
    """Pretrained weights: a local-dir folder, else the local HF cache (no network), else the hub."""
    import timm.models

    if source == "local-dir":
        return create_teacher_model(name, "from its folder", pretrained=True), f"pretrained ({name})"
    if source == "hf-hub":
        repo = name.split(":", 1)[1]
        snapshot = cached_snapshot(repo)
        if snapshot is not None:
            _say_cache_hit(name, snapshot)
            model = create_teacher_model(f"local-dir:{snapshot}", "from the local Hugging Face cache", pretrained=True)
            return model, f"pretrained ({name}, local Hugging Face cache)"
    else:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise CdeitError(f"timm has no pretrained weights for {name}; pass --checkpoint FILE or --random-weights.")
        file = cached_weights(cfg.hf_hub_id, cfg.hf_hub_filename) if cfg.hf_hub_id else None
        if file is not None:
            _say_cache_hit(name, file)
            overlay = {"file": str(file)}
            model = create_teacher_model(
                name, "from the local Hugging Face cache", pretrained=True, pretrained_cfg_overlay=overlay
            )
            return model, f"pretrained ({name}, local Hugging Face cache)"
    if hub_offline():
        raise CdeitError(
            f"HF_HUB_OFFLINE is set and the Hugging Face cache {hub_cache_dir()} holds no weights for {name}; point "
            "HF_HOME (or HF_HUB_CACHE) at a cache that has them, or pass --checkpoint FILE (docs/precompute.md)."
        )
    return _from_hub(name), "pretrained (timm hub)"


def _say_cache_hit(name: str, path: Path) -> None:
    console.print(f"teacher {name}: weights found in the local Hugging Face cache ({path}); no network needed.")


def _from_hub(name: str) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=True)
    except Exception as exc:  # hub, network and cache errors come in many types
        raise CdeitError(
            f"could not load the pretrained weights of {name} from the timm hub ({reason(exc)}); "
            "connect to the network, point HF_HOME at a Hugging Face cache holding them, "
            "or pass --checkpoint FILE (.safetensors or .pth)."
        ) from None


def own_head(teacher: Teacher) -> dict[str, torch.Tensor] | None:
    """The teacher's own classifier as {weight, bias} when it is one linear layer, else None."""
    from torch import nn

    layer = teacher.model.get_classifier()
    if not teacher.head_loaded or not isinstance(layer, nn.Linear) or layer.bias is None:
        return None
    return {"weight": layer.weight.detach().float().clone(), "bias": layer.bias.detach().float().clone()}
