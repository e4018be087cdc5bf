"""The head stage (paper 4.1): the head given by --head, one reused from the cache, or one fitted on the features.

A fitted head is selected on the validation split; its settings (fit options, teacher, data fingerprints) are
stored in CACHE/head.safetensors, so a rerun with the same settings resumes with it instead of refitting.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cdeit.common.cache import FEATURES, HEAD_FILE, SOURCES_SPLIT, ShardSpec, read_arrays, read_head_meta
from cdeit.common.console import console
from cdeit.common.errors import CdeitError
from cdeit.common.head import LinearHead, fit_head, fit_settings, load_head

if TYPE_CHECKING:
    import torch

    from cdeit.precompute.job import PrecomputeJob


def given_head(job: PrecomputeJob) -> LinearHead | None:
    """The head named by --head: a file, the teacher's own classifier (`none`), or None to fit one."""
    from cdeit.common.teacher import own_head

    choice, classes = job.cfg.head, len(job.data["classes"])
    if choice is None:
        return None
    if choice.lower() == "none":
        tensors = own_head(job.teacher)
        if tensors is None or tensors["weight"].shape[0] != classes:
            outputs = job.teacher.model.num_classes if job.teacher.head_loaded else "no trained"
            raise CdeitError(
                f"--head none uses the teacher's own classifier, but {job.teacher.name} has {outputs} outputs "
                f"for a dataset of {classes} classes; drop --head to fit a {classes}-way head (paper 4.1)."
            )
        return LinearHead(tensors["weight"], tensors["bias"], _head_meta(job, "teacher"))
    return load_head(Path(choice), job.teacher, classes)


def reusable_head(job: PrecomputeJob) -> LinearHead | None:
    """The head a previous run fitted into this cache with the same settings (resume), if any."""
    meta = read_head_meta(job.cfg.out)
    if meta is None or not is_reusable(meta, job):
        return None
    return load_head(job.cfg.out / HEAD_FILE, job.teacher, len(job.data["classes"]))


def _head_meta(job: PrecomputeJob, source: str) -> dict[str, Any]:
    t = job.teacher
    return {"source": source, "teacher": t.name, "weights_hash": t.weights_hash, "classes": list(job.data["classes"])}


def fit_if_ready(job: PrecomputeJob, plan: list[ShardSpec]) -> LinearHead | None:
    """Fit the head when the features of every train and val shard are here (else a slice: return None)."""
    need = plan if job.clean else [s for s in plan if s.split in ("train", "val")]
    if not all(s.path(job.cfg.out, FEATURES).is_file() for s in need):
        return None
    if job.clean:
        train, val = _source_features(job, need)
    else:
        train, val = (_split_features(job, [s for s in need if s.split == split]) for split in ("train", "val"))
    console.print(f"fitting the {len(job.data['classes'])}-way head on {len(train[1]):,} train features ...")
    weight, bias, result = fit_head(train, val, len(job.data["classes"]), job.fit, job.device)
    meta = _head_meta(job, "fitted") | {"fit": _fit_settings(job), "result": result}
    console.print(
        f"head fitted: val accuracy {result['val_accuracy']:.2%} at epoch {result['best_epoch']}/{job.fit.epochs}"
    )
    return LinearHead(weight, bias, meta | {"device_type": job.device.type})


def _source_features(
    job: PrecomputeJob, specs: list[ShardSpec]
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Clean view: (features, labels) of the source photographs used in train, and of those used in val."""
    import torch

    from cdeit.common.dataset import beton_path, read_split

    arrays = [read_arrays(s.path(job.cfg.out, FEATURES), ("features", "label", "source")) for s in specs]
    features, labels, source = (np.concatenate([a[k] for a in arrays]) for k in ("features", "label", "source"))
    parts = []
    for split in ("train", "val"):
        used = np.isin(source, read_split(beton_path(job.cfg.data, split), fields=("source",))["source"])
        parts.append((torch.from_numpy(features[used]), torch.from_numpy(labels[used])))
    return parts[0], parts[1]


def _split_features(job: PrecomputeJob, specs: list[ShardSpec]) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    arrays = [read_arrays(s.path(job.cfg.out, FEATURES), ("features", "label")) for s in specs]
    features = torch.from_numpy(np.concatenate([a["features"] for a in arrays]))
    return features, torch.from_numpy(np.concatenate([a["label"] for a in arrays]))


def is_reusable(meta: dict[str, Any], job: PrecomputeJob) -> bool:
    """Whether a cache's head (its metadata) is one this run would fit itself: a resume may keep it."""
    return meta.get("source") == "fitted" and meta.get("fit") == _fit_settings(job)


def _fit_settings(job: PrecomputeJob) -> dict[str, Any]:
    """What decides the fitted head; a clean-view head is fitted on the clean features of the train sources."""
    fingerprints = {s: e["fingerprint"] for s, e in job.data["splits"].items()}
    settings = fit_settings(job.fit, job.teacher, fingerprints)
    if job.clean:
        settings |= {"view": "clean", "sources": job.split_entry(SOURCES_SPLIT)["fingerprint"]}
    return settings
