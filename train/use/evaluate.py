"""`cdeit evaluate`: accuracy, cross-entropy and ECE per corruption and severity, mCE against a baseline run,
CdeiT's corruption head, token similarities, the teacher beside the student, plots and a Markdown report.

Predictions are computed once, batched on the device, and saved per sample so any metric can be recomputed;
every metric below is a vectorised group-by over those arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdeit.common.atomic import atomic_path, write_json
from cdeit.common.console import progress_bar
from cdeit.common.dataset import (
    CORRUPTIONS,
    FIELDS,
    SEVERITY_CODES,
    beton_path,
    check_betons,
    image_size,
    load_manifest,
    make_loader,
    read_split,
    split_info,
)
from cdeit.common.errors import CdeitError
from cdeit.common.metrics import ece_per_group, reliability
from cdeit.train.use.files import (  # noqa: F401  (the readers' old home: results.py and the tests import them here)
    SUMMARY_KEYS,
    check_outputs,
    eval_dir,
    model_hash,
    read_predictions,
    read_result,
    read_summary,
    report_name,
)

PRED_FIELDS = FIELDS  # batches come in the file's field order: image, label, corruption, severity, index, source
CONFIG_KEYS = {"data": str, "student": str, "distill": str}  # what evaluation reads of RUN/config.json


@dataclass
class Run:
    """A training run directory: its config and its final model."""

    path: Path
    config: dict[str, Any]
    model_file: Path

    @classmethod
    def open(cls, path: str | Path, checkpoint: str = "last") -> Run:
        """The run at `path` with the weights `--checkpoint` names: last (model.safetensors), best or a file."""
        from cdeit.train.core.rundir import read_run_config
        from cdeit.train.core.weights import weights_file

        path = Path(path)
        config = read_run_config(path, CONFIG_KEYS)
        return cls(path, config, weights_file(path, checkpoint))

    def load_model(self, device: torch.device) -> Any:
        from cdeit.train.core.weights import load_checked

        return load_checked(self.model_file, device)


# ------------------------------------------------------------------------------------------ predictions
@torch.no_grad()
def predict(model: Any, data_dir: str | Path, split: str, device: torch.device, batch_size: int = 1024,
            workers: int = 2) -> dict[str, np.ndarray]:  # fmt: skip
    """Per-sample outputs over a split: class probabilities, corruption-head probabilities, token cosines, computed
    by train/core/engine.py's `infer` (the trainer's validation reads the same)."""
    from cdeit.train.core.engine import infer
    from cdeit.train.core.models import Normalise

    manifest = load_manifest(data_dir)
    n = split_info(manifest, split, data_dir)["count"]
    check_model_fits(model, manifest, data_dir)
    loader = make_loader(beton_path(data_dir, split), batch_size, "sequential", str(device), fields=PRED_FIELDS,
                         workers=workers)  # fmt: skip
    normalise = Normalise.for_model(model, device)
    chunks: dict[str, list[torch.Tensor]] = {}
    with progress_bar(f"evaluating {split}", n) as advance:
        for images, *fields in loader:
            inference = infer(model, normalise, images)
            out = {"probs": inference.logits.softmax(1)}
            if "corr" in inference.heads:
                out["corruption_probs"] = inference.heads["corr"].float().softmax(1)
            for (a, b), cosine in inference.cosines.items():  # of the final token embeddings (paper 4.4)
                out[f"cos_{a}_{b}"] = cosine
            for name, value in zip(PRED_FIELDS[1:], fields, strict=True):
                out[name] = value.clone()
            for k, v in out.items():
                chunks.setdefault(k, []).append(v.cpu())
            advance(len(images))
    return {k: torch.cat(v).numpy() for k, v in chunks.items()}


def check_model_fits(model: Any, manifest: dict[str, Any], data_dir: str | Path) -> None:
    """Refuse, in one sentence, a student whose input size or class count is not the dataset's (from its manifest)."""
    _, height, _ = model.pretrained_cfg["input_size"]
    classes = len(manifest["classes"])
    if height != image_size(manifest) or model.num_classes != classes:
        raise CdeitError(
            f"the model takes {height}px images and predicts {model.num_classes} classes, but dataset {data_dir} has "
            f"{image_size(manifest)}px images of {classes} classes; evaluate it on the dataset it was trained on."
        )


# ------------------------------------------------------------------------------------------ metrics
def _grouped(values: np.ndarray, keys: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean of values per group, count per group); NaN where a group is empty."""
    count = np.bincount(keys, minlength=n_groups)
    total = np.bincount(keys, weights=values, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count, count


def _stats(probs: np.ndarray, labels: np.ndarray, keys: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    """Accuracy, mean cross-entropy and ECE for each group name (groups with no sample are left out)."""
    correct = (probs.argmax(1) == labels).astype(np.float64)
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))
    acc, count = _grouped(correct, keys, len(names))
    loss, _ = _grouped(nll, keys, len(names))
    ece = ece_per_group(torch.from_numpy(probs), torch.from_numpy(labels), torch.from_numpy(keys), len(names)).numpy()
    return {
        name: {"accuracy": float(acc[g]), "loss": float(loss[g]), "ece": float(ece[g]), "n": int(count[g])}
        for g, name in enumerate(names)
        if count[g]
    }


def error_table(pred: dict[str, np.ndarray]) -> dict[str, dict[int, float]]:
    """Top-1 error E_{s,c} per corruption c (not clean) and severity s, from saved predictions."""
    wrong = (pred["probs"].argmax(1) != pred["label"]).astype(np.float64)
    n_sev = len(SEVERITY_CODES)
    keys = pred["corruption"] * n_sev + pred["severity"]
    err, count = _grouped(wrong, keys, len(CORRUPTIONS) * n_sev)
    table: dict[str, dict[int, float]] = {}
    for c in range(1, len(CORRUPTIONS)):
        for s in SEVERITY_CODES[1:]:
            if count[c * n_sev + s]:
                table.setdefault(CORRUPTIONS[c], {})[s] = float(err[c * n_sev + s])
    return table


def compute_metrics(pred: dict[str, np.ndarray], classes: list[str]) -> dict[str, Any]:
    probs, labels = pred["probs"], pred["label"]
    overall = _stats(probs, labels, np.zeros(len(labels), np.int64), ["all"])["all"]
    per_type = _stats(probs, labels, pred["corruption"], list(CORRUPTIONS))
    per_sev = _stats(probs, labels, pred["severity"], [str(s) for s in SEVERITY_CODES])
    ts_keys = pred["corruption"] * len(SEVERITY_CODES) + pred["severity"]
    ts_names = [f"{c}/{s}" for c in CORRUPTIONS for s in SEVERITY_CODES]
    per_ts = _stats(probs, labels, ts_keys, ts_names)
    per_type_sev: dict[str, dict[str, float]] = {}
    for key, value in per_ts.items():
        c, s = key.split("/")
        per_type_sev.setdefault(c, {})[s] = value["accuracy"]
    corrupted = pred["corruption"] > 0
    metrics: dict[str, Any] = {
        "n": int(len(labels)),
        **overall,
        "clean": per_type.get("clean"),
        "corrupted": _stats(probs[corrupted], labels[corrupted], np.zeros(int(corrupted.sum()), np.int64), ["c"]).get(
            "c"
        ),
        "per_corruption": per_type,
        "per_severity": per_sev,
        "per_corruption_severity_accuracy": per_type_sev,
        "per_class": _stats(probs, labels, labels, list(classes)),
        "reliability": reliability(torch.from_numpy(probs), torch.from_numpy(labels)),
        "class_confusion": np.bincount(labels * len(classes) + probs.argmax(1), minlength=len(classes) ** 2)
        .reshape(len(classes), len(classes))
        .tolist(),
    }
    if "corruption_probs" in pred:
        guess = pred["corruption_probs"].argmax(1)
        k = len(CORRUPTIONS)
        metrics["corruption_head"] = {
            "accuracy": float((guess == pred["corruption"]).mean()),
            "confusion": np.bincount(pred["corruption"] * k + guess, minlength=k * k).reshape(k, k).tolist(),
        }
    cos = {k[4:].replace("_", "~"): float(v.mean()) for k, v in pred.items() if k.startswith("cos_")}
    if cos:
        metrics["token_similarity"] = cos
    return metrics


def mce_report(pred: dict[str, np.ndarray], baseline: dict[str, np.ndarray]) -> dict[str, Any]:
    """mCE (Eq. 10) with the model's and the baseline's errors per corruption and severity."""
    from cdeit.common.metrics import corruption_errors, mce

    errors, base = error_table(pred), error_table(baseline)
    if not errors:
        raise CdeitError("the split holds no corrupted images, so mCE is undefined; evaluate a split with corruptions.")
    return {
        "mce": mce(errors, base),
        "corruption_errors": corruption_errors(errors, base),
        "errors": errors,
        "baseline_errors": base,
        "baseline_accuracy": {
            c: v["accuracy"]
            for c, v in _stats(baseline["probs"], baseline["label"], baseline["corruption"], list(CORRUPTIONS)).items()
        },  # fmt: skip
    }


def teacher_report(pred: dict[str, np.ndarray], teacher_logits: np.ndarray) -> dict[str, Any]:
    t = teacher_logits[pred["index"]].argmax(1)
    acc, _ = _grouped((t == pred["label"]).astype(np.float64), pred["corruption"], len(CORRUPTIONS))
    return {
        "accuracy": float((t == pred["label"]).mean()),
        "agreement": float((t == pred["probs"].argmax(1)).mean()),
        "per_corruption_accuracy": {c: float(a) for c, a in zip(CORRUPTIONS, acc, strict=True) if not np.isnan(a)},
    }


def leakage_report(pred: dict[str, np.ndarray], train_sources: np.ndarray) -> dict[str, Any]:
    """Accuracy on samples whose source photograph also occurs in train, and on those whose does not."""
    seen = np.isin(pred["source"], train_sources)
    correct = pred["probs"].argmax(1) == pred["label"]
    return {
        "seen_in_train": {"n": int(seen.sum()), "accuracy": float(correct[seen].mean()) if seen.any() else None},
        "unseen_in_train": {
            "n": int((~seen).sum()),
            "accuracy": float(correct[~seen].mean()) if (~seen).any() else None,
        },
    }


# ------------------------------------------------------------------------------------------ orchestration
def baseline_predictions(baseline: str | Path, data: str | Path, split: str, teacher_cache: str | None,
                         device: str, batch_size: int, workers: int) -> dict[str, np.ndarray]:  # fmt: skip
    """The baseline run's saved predictions on `split` of `data`; evaluates the baseline first (against itself,
    mCE 100%) when it has none for this data, so `cdeit compare` finds its report too."""
    from cdeit.train.core.weights import sha256_file

    base = Run.open(baseline)
    saved, npz = base.path / "eval" / f"{split}.json", base.path / "eval" / f"{split}-predictions.npz"
    fingerprint = split_info(load_manifest(data), split, data)["fingerprint"]
    fresh = saved.is_file() and npz.is_file()
    if fresh:  # the same data, and the same model file (by content: a retrained baseline makes them stale)
        result = read_result(saved)
        fresh = result["fingerprint"] == fingerprint and model_hash(result) == sha256_file(base.model_file)
    if not fresh:
        check_outputs(base.path, "last", split)
        evaluate(base.path, str(data), split, str(base.path), teacher_cache, device, batch_size, workers)
    return read_predictions(npz)


def evaluate_missing(runs: list[Path], split: str = "test", device: str = "auto", batch_size: int = 1024,
                     workers: int = 2, checkpoint: str = "last") -> list[Path]:  # fmt: skip
    """Evaluate every run of `runs` that has no RUN/eval/<split>.json yet, with the data, baseline and teacher
    cache of the runs already evaluated (so a comparison measures every run the same way); returns those."""
    runs = [Path(r) for r in runs if (Path(r) / "config.json").is_file()]  # run directories only
    done = [p for r in runs if (p := eval_dir(r, checkpoint) / f"{split}.json").is_file()]
    like = read_result(done[0]) if done else {}
    missing = [r for r in runs if not (eval_dir(r, checkpoint) / f"{split}.json").is_file()]
    for run in missing:
        evaluate(run, like.get("data"), split, like.get("baseline"), like.get("teacher_cache"), device, batch_size,
                 workers, checkpoint)  # fmt: skip
    return missing


def evaluate(run_dir: str | Path, data: str | None = None, split: str = "test", baseline: str | None = None,
             teacher_cache: str | None = None, device: str = "auto", batch_size: int = 1024,
             workers: int = 2, checkpoint: str = "last") -> dict[str, Any]:  # fmt: skip
    """Evaluate a run's checkpoint (last, best or a file) on a split; writes <split>.json, <split>-predictions.npz,
    its report (report_name) and plots to eval_dir(run, checkpoint)."""
    from cdeit.common.device import resolve_device
    from cdeit.train.core.kinds import resolve_head_strategy

    if batch_size < 1 or workers < 1:
        raise CdeitError(f"--batch-size and --workers must be at least 1, got {batch_size} and {workers}.")
    from cdeit.train.core.weights import sha256_file

    run = Run.open(run_dir, checkpoint)
    if baseline and Path(baseline).resolve() != run.path.resolve():
        Run.open(baseline)  # a missing or damaged baseline is named before any work, and nothing is written
    out_dir = check_outputs(run.path, checkpoint, split)
    summary = read_summary(run.path)  # read first: a damaged file is named before the work, not after
    data = data or run.config["data"]
    manifest = load_manifest(data)
    info = split_info(manifest, split, data)
    check_betons(data, manifest, [split, *(["train"] if split != "train" and "train" in manifest["splits"] else [])])
    dev = resolve_device(device)
    pred = predict(run.load_model(dev), data, split, dev, batch_size, workers)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / f"{split}-predictions.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **pred)
    result: dict[str, Any] = {
        "run": str(run.path.resolve()),
        "split": split,
        "checkpoint": {
            "name": checkpoint if checkpoint in ("best", "last") else "file",
            "file": str(run.model_file),
            "sha256": sha256_file(run.model_file),
        },  # fmt: skip
        "data": str(Path(data).resolve()),
        "fingerprint": info["fingerprint"],
        "split_policy": manifest.get("split_policy"),
        "student": run.config["student"],
        "model": run.config.get("model"),  # `train --model NAME`: timm's model, which `student` does not name
        "distill": run.config["distill"],
        "head_strategy": resolve_head_strategy(
            run.config["student"], run.config.get("head_strategy"), f"{run.path}/config.json"
        ),
        **compute_metrics(pred, manifest["classes"]),
    }
    if baseline:
        same = Path(baseline).resolve() == run.path.resolve()
        base_pred = pred if same else baseline_predictions(baseline, data, split, teacher_cache, device, batch_size,
                                                           workers)  # fmt: skip
        result["baseline"] = str(Path(baseline).resolve())
        result["mce"] = mce_report(pred, base_pred)
    if teacher_cache:
        result["teacher_cache"] = str(Path(teacher_cache).resolve())
        from cdeit.common.cache import load_teacher_logits

        logits = load_teacher_logits(teacher_cache, data, split=split, device="cpu").numpy()
        result["teacher"] = teacher_report(pred, logits)
    if split != "train" and "train" in manifest["splits"]:
        train_sources = read_split(beton_path(data, "train"), fields=("source",))["source"]
        result["leakage"] = leakage_report(pred, np.unique(train_sources))
    if summary:
        result["training"] = {k: summary[k] for k in SUMMARY_KEYS}
    write_json(out_dir / f"{split}.json", result)
    from cdeit.train.use.plots import write_plots
    from cdeit.train.use.report import write_report

    plots = write_plots(result, out_dir, split, manifest["classes"])
    write_report(result, out_dir / report_name(split), plots)
    result["files"] = {"json": str(out_dir / f"{split}.json"), "report": str(out_dir / report_name(split)),
                       "plots": [str(p) for p in plots]}  # fmt: skip
    return result
