"""The files `cdeit evaluate` writes into a run and the one reader of each: RUN/eval/<split>.json (`read_result`),
its predictions (`read_predictions`), RUN/summary.json (`read_summary`), and where they go (`eval_dir`, checked to be
the run's own folders by `check_outputs`). Every key a command uses is checked, with a sentence naming file and key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cdeit.common.atomic import NUMBER, check_keys, field, read_json_object
from cdeit.common.dataset import CORRUPTIONS, SEVERITY_CODES
from cdeit.common.errors import CdeitError

SUMMARY_KEYS = {"parameters": int, "train_images_per_s": NUMBER, "train_seconds": NUMBER, "steps": int}
RESULT_KEYS = {
    "data": str,
    "fingerprint": str,
    "accuracy": NUMBER,
    "ece": (*NUMBER, type(None)),
    "per_corruption": dict,
}


def eval_dir(run: str | Path, checkpoint: str = "last") -> Path:
    """Where evaluations of a run's checkpoint go: RUN/eval for the last model, RUN/eval/best (or the file's stem)."""
    from cdeit.train.core.weights import checkpoint_label

    return Path(run) / "eval" if checkpoint == "last" else Path(run) / "eval" / checkpoint_label(checkpoint)


def report_name(split: str) -> str:
    """One report per split: report.md for test (its path since the start), report-<split>.md for the others."""
    return "report.md" if split == "test" else f"report-{split}.md"


def read_result(path: Path) -> dict[str, Any]:
    """A saved RUN/eval/<split>.json; a damaged one, or one that lacks a key, is one sentence naming it."""
    fix = "delete it and evaluate the run again"
    result = read_json_object(path, str(path), fix, RESULT_KEYS)
    if not 0 <= result["accuracy"] <= 1:
        raise CdeitError(f"{path} has 'accuracy' = {result['accuracy']}, which should be in [0, 1]; {fix}.")
    for key, inner in (("clean", {"accuracy": NUMBER}), ("corrupted", {"accuracy": NUMBER}), ("mce", {"mce": NUMBER})):
        if result.get(key) is not None:  # optional parts: present only where the split or a baseline has them
            check_keys(result, {key: dict}, str(path), fix)
            for name, kind in inner.items():
                field(result[key], name, kind, str(path), fix, at=f"{key}.")
    if result.get("mce") is not None:
        check_keys(result, {"baseline": str}, str(path), fix)
    for key in ("baseline", "teacher_cache"):
        field(result, key, (str, type(None)), str(path), fix, optional=True)
    for name, entry in result["per_corruption"].items():
        if not isinstance(entry, dict):
            raise CdeitError(f"{path} has 'per_corruption.{name}' = {entry!r:.40}, which should be an object; {fix}.")
        field(entry, "accuracy", NUMBER, str(path), fix, at=f"per_corruption.{name}.")
    if result.get("teacher") is not None:
        teacher = field(result, "teacher", dict, str(path), fix)
        for key in ("accuracy", "agreement"):
            field(teacher, key, NUMBER, str(path), fix, at="teacher.")
        field(teacher, "per_corruption_accuracy", dict, str(path), fix, at="teacher.", optional=True)
    field(result, "checkpoint", dict, str(path), fix, optional=True)
    return result


def check_outputs(run: Path, checkpoint: str, split: str) -> Path:
    """The folder `evaluate` writes (eval_dir) when it and its parents up to RUN are real folders and no file it
    writes is a symlink (RUN/eval linked into another run would write there); one sentence naming it else."""
    from cdeit.common.atomic import real_file, real_folder

    out_dir = real_folder(eval_dir(run, checkpoint), run, f"cdeit evaluate {run}")
    if out_dir.is_dir():
        names = {f"{split}.json", f"{split}-predictions.npz", report_name(split)}
        for path in (*[out_dir / n for n in names], *out_dir.glob(f"{split}-*.png"), out_dir / ".cdeit.lock"):
            real_file(path, f"cdeit evaluate {run}")
    return out_dir


def read_summary(run_dir: Path) -> dict[str, Any]:
    """RUN/summary.json (what training measured), or {} for a run that has not finished training."""
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        return {}
    fix = f"restore it or finish the run with `cdeit train --resume {run_dir}`"
    summary = read_json_object(path, str(path), fix, SUMMARY_KEYS)
    for key in SUMMARY_KEYS:
        field(summary, key, SUMMARY_KEYS[key], str(path), fix, minimum=0)
    return summary


def model_hash(result: dict[str, Any]) -> str | None:
    """The sha256 of the model file an eval JSON's predictions came from (None: written before it was recorded)."""
    checkpoint = result.get("checkpoint")
    return checkpoint.get("sha256") if isinstance(checkpoint, dict) else None


PRED_KEYS = {"probs": 2, "label": 1, "corruption": 1, "severity": 1}  # what mCE reads, with its dimensions


def read_predictions(path: Path, keys: tuple[str, ...] = tuple(PRED_KEYS)) -> dict[str, np.ndarray]:
    """A saved RUN/eval/<split>-predictions.npz: numeric arrays (no pickles) of one length, every key of `keys`
    present with its dimensions; one sentence naming the file and the array otherwise."""
    fix = "delete it and evaluate the run again"
    try:
        with np.load(path, allow_pickle=False) as arrays:
            pred = {k: arrays[k] for k in arrays.files}
    except FileNotFoundError:
        raise CdeitError(f"{path} is missing; evaluate the run again.") from None
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise CdeitError(f"{path} could not be read ({type(exc).__name__}); {fix}.") from None
    for key in keys:
        value = pred.get(key)
        if value is None or value.ndim != PRED_KEYS.get(key, value.ndim) or value.dtype.kind not in "biuf":
            raise CdeitError(f"{path} has no numeric array {key!r} of {PRED_KEYS.get(key, 1)} dimension(s); {fix}.")
        if len(value) != len(pred[keys[0]]):
            raise CdeitError(f"{path} has an array {key!r} of another length than {keys[0]!r}; {fix}.")
    labels = [pred[k] for k in ("label", "corruption", "severity") if k in keys]
    if any(a.size and (a.min() < 0 or (a.dtype.kind == "f")) for a in labels) or (
        "probs" in keys and not np.isfinite(pred["probs"]).all()
    ):
        raise CdeitError(f"{path} holds labels or probabilities out of range; {fix}.")
    if "corruption" in keys and pred["corruption"].size and pred["corruption"].max() >= len(CORRUPTIONS):
        raise CdeitError(f"{path} has 'corruption' codes beyond the {len(CORRUPTIONS)} types; {fix}.")
    if "severity" in keys and pred["severity"].size and pred["severity"].max() >= len(SEVERITY_CODES):
        raise CdeitError(f"{path} has 'severity' codes beyond {SEVERITY_CODES[-1]}; {fix}.")
    if "label" in keys and pred["label"].size and pred["label"].max() >= pred["probs"].shape[1]:
        raise CdeitError(f"{path} has a 'label' beyond its {pred['probs'].shape[1]} classes; {fix}.")
    return pred
