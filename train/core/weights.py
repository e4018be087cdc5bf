"""A run's weights files and starting from weights: `--checkpoint best|last|FILE` (which file of a run a command
reads) and `--initial-checkpoint FILE|RUN` (timm's name: the weights a new run starts from, shapes checked first).

A run keeps two student files: `model.safetensors` (the last epoch, "last") and `best.safetensors` (the epoch of
the best validation accuracy, "best"; summary.json says which epoch and by what). docs/training.md.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from cdeit.common.errors import CdeitError

CHECKPOINT_FILES = {"last": "model.safetensors", "best": "best.safetensors"}


def weights_file(model: str | Path, checkpoint: str = "last", option: str = "--checkpoint", given: str = "") -> Path:
    """The safetensors file that `model` (a run directory or a file, `given` by that option) and `checkpoint` (best,
    last or a file) name; one sentence naming the option when there is none."""
    path = Path(model)
    if not path.exists():
        raise CdeitError(f"{given or option} {path}: no such file or run directory; check the path.")
    if checkpoint not in CHECKPOINT_FILES:  # a file of its own
        file = Path(checkpoint)
        if not file.is_file():
            raise CdeitError(f"{option} {checkpoint}: no such file; give best, last or a .safetensors file.")
        return file
    if not path.is_dir():
        if checkpoint != "last":
            raise CdeitError(f"{option} {checkpoint} picks a file of a run directory, but {path} is a file; drop it.")
        return path
    file = path / CHECKPOINT_FILES[checkpoint]
    if not file.is_file():
        raise CdeitError(
            f"{path} holds no {file.name} ({option} {checkpoint}); finish the run with `cdeit train --resume {path}`."
        )
    return file


def checkpoint_label(checkpoint: str) -> str:
    """The name of a checkpoint in a run's eval folder: best, last, or the file's stem."""
    return checkpoint if checkpoint in CHECKPOINT_FILES else Path(checkpoint).stem


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_finite(tensors: Any, file: str | Path, option: str = "") -> None:
    """Refuse weights holding NaN or infinity (a damaged or diverged file): they would give chance accuracy and
    NaN confidences that look like results; one sentence naming the file and the first such tensor."""
    import torch

    for key, tensor in tensors.items():
        if torch.is_floating_point(tensor) and not bool(torch.isfinite(tensor).all()):
            raise CdeitError(
                f"{option + ' ' if option else ''}{file}: tensor {key} holds NaN or infinite values, so the model is "
                "damaged or diverged; use another weights file (--checkpoint best, or retrain)."
            )


def load_checked(file: str | Path, device: Any) -> Any:
    """A student from a safetensors file (models.load_safetensors, metadata checked), its weights finite."""
    from cdeit.train.core.models import load_safetensors

    model = load_safetensors(file, device)
    check_finite(model.state_dict(), file)
    return model


def initial_state(source: str | Path, model: Any) -> tuple[dict[str, Any], list[str]]:
    """The tensors of `--initial-checkpoint` (a student file, or a run directory's model) checked against `model`:
    every key and shape must fit, except the class-space heads when the class count differs (left fresh).
    Returns the state to load (non-strict where heads are left out) and the head keys left fresh."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = weights_file(source, "last", "--initial-checkpoint", "--initial-checkpoint")
    try:
        state = load_file(str(file), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CdeitError(f"--initial-checkpoint {file} is not a readable safetensors file ({exc}).") from None
    check_finite(state, file, "--initial-checkpoint")
    from cdeit.train.core.models import class_heads, unwrap, weights_module

    student = unwrap(model)
    own, heads = weights_module(student).state_dict(), class_heads(student)
    for key in sorted(set(own) | set(state)):
        if key not in state or key not in own:
            where = "is missing from" if key not in state else "is not a tensor of the student, but is in"
            raise CdeitError(
                f"--initial-checkpoint {file}: tensor {key} {where} the file; give the weights of a model built "
                "with the same --model (or --student and --head-strategy) and --model-kwargs."
            )
    fresh = [k for k in own if k.startswith(heads) and own[k].shape != state[k].shape]
    for key in own:
        if key not in fresh and own[key].shape != state[key].shape:
            raise CdeitError(
                f"--initial-checkpoint {file}: tensor {key} has shape {tuple(state[key].shape)}, the student's "
                f"{tuple(own[key].shape)}; give the weights of a student of the same sizes (--model-kwargs)."
            )
    return {k: v for k, v in state.items() if k not in fresh}, fresh


def load_initial_checkpoint(source: str | Path, model: Any) -> str:
    """Load `--initial-checkpoint` into `model` (initial_state); returns the console line saying what was loaded."""
    from cdeit.train.core.models import unwrap, weights_module

    state, fresh = initial_state(source, model)
    weights_module(unwrap(model)).load_state_dict(state, strict=not fresh)
    file = weights_file(source, "last", "--initial-checkpoint", "--initial-checkpoint")
    if fresh:
        return (
            f"initial weights from {file}; the class count differs ({model.num_classes} classes here), so the heads "
            f"{', '.join(sorted({k.rsplit('.', 1)[0] for k in fresh}))} start fresh"
        )
    return f"initial weights from {file}"
