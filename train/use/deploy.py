"""Using a trained student: classify image files (`cdeit predict`) and export it (`cdeit export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdeit.common.atomic import write_json
from cdeit.common.dataset import CORRUPTIONS
from cdeit.common.errors import CdeitError


def load_student(model: str | Path, device: torch.device, checkpoint: str = "last") -> tuple[Any, list[str]]:
    """A student from a run directory (the file `checkpoint` names: last, best or a file) or a `.safetensors` file;
    with its class names: the file's own (its metadata), else the run's dataset's, else an exported sidecar's."""
    from cdeit.common.atomic import read_json_object, string_list
    from cdeit.train.core.models import CLASSES_KEY, read_classes
    from cdeit.train.core.rundir import read_run_config
    from cdeit.train.core.weights import load_checked, weights_file

    path = Path(model)
    file = weights_file(path, checkpoint, given="--model")
    student = load_checked(file, device)
    classes = read_classes(file)
    if classes is None and CLASSES_KEY in metadata_keys(file):
        raise CdeitError(f"{file}: its {CLASSES_KEY} metadata is not a list of class names; export the model again.")
    config = path / "config.json"
    if classes is None and path.is_dir() and config.is_file():
        from cdeit.common.dataset import load_manifest

        try:
            classes = load_manifest(read_run_config(path)["data"])["classes"]
        except CdeitError:
            classes = None  # the model file alone still predicts; classes are then numbered
    sidecar = file.with_suffix(".json")
    if classes is None and sidecar.is_file():
        fix = "export the model again"
        classes = string_list(read_json_object(sidecar, str(sidecar), fix), "classes", str(sidecar), fix, optional=True)
    if classes is not None and (
        not isinstance(classes, list)
        or len(classes) != student.num_classes
        or not all(isinstance(c, str) for c in classes)
    ):
        raise CdeitError(f"the class names beside {file} do not match its {student.num_classes} outputs; export again.")
    return student, list(classes) if classes else [str(i) for i in range(student.num_classes)]


def metadata_keys(file: Path) -> set[str]:
    """The metadata entries of a safetensors file (already read once by load_checked, so readable)."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as fh:
        return set(fh.metadata() or {})


def load_image(path: Path, size: int = 32) -> np.ndarray:
    """Any PNG/JPEG to size x size x 3 uint8 (the model's input size): centre-crop to a square, then Pillow bicubic
    (antialiased) resize."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if path.exists() and not path.is_file():  # a named pipe would block the read forever, a device never end
        raise CdeitError(f"{path}: not a regular file (a folder, pipe or device); give an image file.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # refuse above the warning limit too
            with Image.open(path) as img:
                img = to_rgb8(img)
                w, h = img.size
                side = min(w, h)
                box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
                return np.asarray(img.resize((size, size), Image.Resampling.BICUBIC, box=box), dtype=np.uint8)
    except FileNotFoundError:
        raise CdeitError(f"{path}: no such file.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise CdeitError(f"{path}: the image is too large to decode safely (a decompression bomb?); skipped.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise CdeitError(f"{path}: not a readable image ({type(exc).__name__}).") from None


def to_rgb8(img: Any) -> Any:
    """An 8-bit RGB copy of a Pillow image: 16-bit and 32-bit integer greyscale (mode I;16*, I) scaled from their
    range to 0..255 first (Pillow's convert clips them, so a 16-bit PNG became nearly white)."""
    from PIL import Image

    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0) <= 65535 else float(values.max())
        scaled = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        img = Image.fromarray(scaled, "L")
    return img.convert("RGB")


@torch.no_grad()
def predict_files(
    model: str | Path, paths: list[Path], device: str = "cpu", checkpoint: str = "last"
) -> list[dict[str, Any]]:
    """One result per path: class, confidence (and corruption type for CdeiT), or an error sentence."""
    from cdeit.common.device import resolve_device
    from cdeit.train.core.models import Normalise

    dev = resolve_device(device)
    student, classes = load_student(model, dev, checkpoint)
    results: list[dict[str, Any]] = []
    size = int(student.patch_embed.img_size[0])  # the input size the student was trained at (32, 64, 224)
    images, ok = [], []
    for p in paths:
        try:
            images.append(load_image(p, size))
            ok.append(len(results))
            results.append({"file": str(p)})
        except CdeitError as exc:
            results.append({"file": str(p), "error": str(exc)})
    if not images:
        return results
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(dev)  # (B, 3, S, S) uint8
    heads = student.forward_heads(Normalise.for_model(student, dev)(batch))
    probs = student.combine(heads).float().softmax(1).cpu()
    corr = heads["corr"].float().softmax(1).cpu() if "corr" in heads else None
    for row, i in enumerate(ok):
        k = int(probs[row].argmax())
        results[i] |= {"class": classes[k], "class_index": k, "confidence": float(probs[row, k])}
        if corr is not None:
            c = int(corr[row].argmax())
            results[i] |= {"corruption": CORRUPTIONS[c], "corruption_confidence": float(corr[row, c])}
    return results


def export(run: str | Path, to: str | Path, checkpoint: str = "last") -> tuple[Path, Path]:
    """Write the student as safetensors (config in its metadata) plus `<to>.json` with the model config.

    `timm.create_model(cfg["model_name"], **cfg["kwargs"])` then `load_state_dict` rebuilds it after
    `import cdeit.train.core.models`. Training-only modules (alignment projections) are not part of the student.
    """
    from cdeit.train.core.models import save_safetensors

    to = check_export_target(run, to)
    student, classes = load_student(run, torch.device("cpu"), checkpoint)
    to.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(student, to, classes)
    sidecar = to.with_suffix(".json")
    write_json(sidecar, student.model_config() | {"classes": classes, "corruptions": list(CORRUPTIONS)})
    return to, sidecar


EXPORT_SIDECAR_KEYS = {"model_name", "kwargs", "classes", "corruptions"}  # what export writes beside the model


def check_export_target(run: str | Path, to: str | Path) -> Path:
    """Refuse an export that would replace a file the command does not own or write into another kind of folder:
    --to must end in .safetensors, its folder be no dataset, cache, study or other run, and an existing target or
    `.json` beside it be an earlier export (its sidecar has export's keys only); checked before anything is written."""
    from cdeit.common.atomic import read_json_object, real_file
    from cdeit.train.core.rundir import folder_kind

    to = Path(to)
    if to.suffix != ".safetensors":
        raise CdeitError(f"--to {to} should end in .safetensors.")
    for folder in (to.parent, *to.parent.parents):
        kind = folder_kind(folder) if folder.is_dir() else None
        if kind == "a run" and folder.resolve() == Path(run).resolve():
            break  # the run's own folder: its exports may live there
        if kind not in (None, "a study"):
            raise CdeitError(f"--to {to} lies inside {folder}, which is {kind}; export to a folder of its own.")
    sidecar = real_file(to.with_suffix(".json"), f"--to {to}")
    real_file(to, f"--to {to}")
    if sidecar.exists():
        keys = set(read_json_object(sidecar, str(sidecar), "move it or choose another --to"))
        if keys != EXPORT_SIDECAR_KEYS:
            raise CdeitError(
                f"--to {to} would replace {sidecar}, which is not an export's model config; choose another --to."
            )
    elif to.exists():
        raise CdeitError(f"--to {to} would replace {to}, which is not an earlier export (no {sidecar.name} beside it); "
                         "choose another --to.")  # fmt: skip
    return to
