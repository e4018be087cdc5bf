"""The cache format: its version, file and dataset names, the shard attributes and when two provenances agree.

The one module that names what a shard carries. `provenance` builds the attributes a run shares across its
shards, `shard_attrs` adds what one shard says about itself, and `provenance_conflicts` is the single answer
to "may these two shards (or caches) sit in one cache?", asked by resume, verify and merge alike.
docs/cache-format.md describes every key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdeit.common.errors import CdeitError
from cdeit.common.tokens import TARGET_GRID, TOKEN_TARGETS
from cdeit.common.views import AUG_KEYS

CACHE_FORMAT = "cdeit-teacher-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
HEAD_FILE = "head.safetensors"
FEATURES_DIR = "features"
LOGITS = "logits"  # shard kind: the cache proper (index, logits, optional float16 features)
FEATURES = "features"  # shard kind: pass-1 work shards (index, float16 features, label, corruption)
AUGMENTED = "augmented"  # shard kind: K augmented views per train sample (`--views K`), in CACHE/augmented/
AUGMENTED_DIR = "augmented"
# The datasets of an augmented shard: (n,) index, then (n, K, ...) per view: the teacher's raw logits, the drawn
# parameters (common.views.ViewParams) and the checksum of the rendered 32px image.
AUGMENTED_DATASETS = (
    "index", "view_logits", "view_partner", "view_mode", "view_weight", "view_box", "view_erase", "view_hash",
)  # fmt: skip
# Attributes every shard of one cache shares: two shards (or caches) join only when all of these agree.
IDENTITY_KEYS = (
    "teacher",
    "weights_hash",
    "random_weights",
    "input_size",
    "interpolation",
    "mean",
    "std",
    "compute_dtype",
    "shard_size",
    "classes",
    "corruptions",
)
LOGIT_IDENTITY_KEYS = (*IDENTITY_KEYS, "head_hash", "store_features")
# provenance that may differ per shard; teacher_module(_sha256): the user code of a --teacher-module teacher
INFO_KEYS = (
    "weights_source", "device_type", "resize", "tool_version", "teacher_module", "teacher_module_sha256",
    "teacher_spec", "teacher_run", "teacher_run_sha256", "teacher_run_config",
)  # fmt: skip
RUN_KEYS = ("teacher_run", "teacher_run_sha256", "teacher_run_config")  # a `train --model` run as the teacher
# Written only by caches that differ from the paper's (a clean view or per-patch targets): a shard without them is a
# same-view shard with logits (and its pre-logit `features` when store_features), as every cache before them.
VIEW_KEYS = ("view", "token_targets", "target_grid", "teacher_grid")
VIEWS = ("same", "clean")  # same: the teacher saw each sample itself; clean: its clean source image
TARGETS = ("logits", "embedding", *TOKEN_TARGETS)  # what a cache can hold, in canonical order
TARGET_DATASETS = {"logits": "logits", "embedding": "features", "patches": "patches", "attention": "attention"}
# checked finite wherever a shard is read
FLOAT_DATASETS = ("logits", "features", "patches", "attention", "view_logits")
SOURCES_SPLIT = "sources"  # the rows of a clean-view cache: DATA/sources.beton, one per source photograph
TEST_PAUSE_ENV = "CDEIT_TEST_SHARD_PAUSE_S"  # tests only: seconds to wait before a finished shard is renamed


# --------------------------------------------------------------------------------------------- shard layout


@dataclass(frozen=True)
class ShardSpec:
    """One shard: samples `start..stop-1` of `split`."""

    split: str
    shard: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.split}-{self.shard:05d}.h5"

    @property
    def count(self) -> int:
        return self.stop - self.start

    def path(self, cache_dir: str | os.PathLike, kind: str = LOGITS) -> Path:
        sub = {LOGITS: "", FEATURES: FEATURES_DIR, AUGMENTED: AUGMENTED_DIR}[kind]
        return Path(cache_dir) / sub / self.name


def plan_shards(counts: Mapping[str, int], shard_size: int) -> list[ShardSpec]:
    """Every shard of every split, in split order then sample order."""
    if shard_size < 1:
        raise CdeitError(f"--shard-size must be at least 1, got {shard_size}.")
    return [
        ShardSpec(split, k, start, min(start + shard_size, n))
        for split, n in counts.items()
        for k, start in enumerate(range(0, n, shard_size))
    ]


# --------------------------------------------------------------------------------------------- what a cache holds


def cache_view(attrs: Mapping[str, Any]) -> str:
    """The view of a cache (its manifest provenance) or shard (its attributes): `same` unless written `clean`."""
    return attrs.get("view") or "same"


def cache_targets(attrs: Mapping[str, Any]) -> list[str]:
    """What a cache (manifest provenance) or logit shard (attributes) holds, in TARGETS order."""
    if attrs.get("targets"):
        return list(attrs["targets"])
    held = {"logits", *(["embedding"] if attrs.get("store_features") else []), *(attrs.get("token_targets") or [])}
    return [t for t in TARGETS if t in held]


def views_of(attrs: Mapping[str, Any]) -> int:
    """K, the augmented views per train sample of a cache or shard (0: none, the paper's cache)."""
    return int(attrs.get("views") or 0)


def augmentation_of(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded view settings (AUG_KEYS) of a K-view cache or shard; empty without views."""
    return {k: attrs.get(k) for k in AUG_KEYS} if views_of(attrs) else {}


def token_targets_of(attrs: Mapping[str, Any]) -> list[str]:
    """The per-patch targets (patches, attention) of a cache or shard."""
    return [t for t in cache_targets(attrs) if t in TOKEN_TARGETS]


# --------------------------------------------------------------------------------------------- attributes


def provenance(
    *,
    teacher: str,
    weights_hash: str,
    random_weights: bool,
    preprocessing: Mapping[str, Any],
    compute_dtype: str,
    shard_size: int,
    classes: Sequence[str],
    corruptions: Sequence[str],
    weights_source: str,
    device_type: str,
    view: str = "same",
    token_targets: Sequence[str] = (),
    teacher_grid: Sequence[int] = (),
    teacher_module: str | None = None,
    teacher_module_sha256: str | None = None,
    augmentation: Mapping[str, Any] | None = None,
    teacher_spec: str | None = None,
    teacher_run: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The attributes every shard of one run shares (IDENTITY_KEYS), its informational keys and, only for a cache
    that differs from the paper's (a clean view or per-patch targets), the VIEW_KEYS.

    `preprocessing` holds input_size, interpolation, mean, std and resize (common.preprocess); `teacher_grid`
    is the teacher's patch grid, which per-patch targets are pooled from onto the students' TARGET_GRID;
    `teacher_module` and its file's sha256 are written only for a teacher of the user's own code (--teacher-module).
    `augmentation` (AUG_KEYS: views, view_seed and the aug_ settings) only for a K-view cache (`--views K`).
    `teacher_spec`: the --teacher spelling (`name.tag`, `hf-hub:org/repo`) when it is not the architecture's name,
    from which `train --online-teacher` finds the same weights again. `teacher_run` (RUN_KEYS): a `cdeit train
    --model` run as the teacher: its directory, its model file's sha256 and its config.json (JSON text).
    """
    from cdeit.common import __version__

    values: dict[str, Any] = {
        "teacher": teacher,
        "weights_hash": weights_hash,
        "random_weights": random_weights,
        **preprocessing,
        "compute_dtype": compute_dtype,
        "shard_size": shard_size,
        "classes": list(classes),
        "corruptions": list(corruptions),
        "weights_source": weights_source,
        "device_type": device_type,
        "tool_version": __version__,
    }
    if teacher_module is not None:
        values |= {"teacher_module": teacher_module, "teacher_module_sha256": teacher_module_sha256}
    if teacher_spec is not None and teacher_spec != teacher:
        values["teacher_spec"] = teacher_spec
    if teacher_run:
        values |= {k: teacher_run[k] for k in RUN_KEYS}
    if view != "same" or token_targets:  # the paper's cache (same view, logits [+ features]) carries none of these
        values |= {"view": view, "token_targets": list(token_targets)}
    if token_targets:
        values |= {"target_grid": [TARGET_GRID, TARGET_GRID], "teacher_grid": list(teacher_grid)}
    if augmentation:
        values |= {k: augmentation[k] for k in AUG_KEYS}
    return json.loads(json.dumps(values))  # tuples -> lists, as they come back from HDF5 and JSON


def shard_attrs(
    spec: ShardSpec,
    kind: str,
    run: Mapping[str, Any],
    split: Mapping[str, Any],
    head_hash: str | None = None,
    store_features: bool = False,
    tally: tuple[Sequence[int], Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Every attribute of one shard: the format, where the shard sits, the data it covers and the run's `provenance`.

    `split` is the dataset manifest's entry (count, fingerprint) for the shard's split. A logit shard adds the
    head's hash, whether it keeps the features and, as `tally`, the teacher's (correct, seen) per corruption type.
    """
    attrs = {"format": CACHE_FORMAT, "format_version": FORMAT_VERSION, "kind": kind}
    attrs |= {"split": spec.split, "shard": spec.shard, "start": spec.start, "stop": spec.stop}
    attrs |= {"split_count": split["count"], "data_fingerprint": split["fingerprint"], **run}
    if kind == FEATURES:
        return attrs | {"feature_dtype": "float16"}
    if head_hash is None:
        raise ValueError("a logit or augmented shard records the hash of the head that made its logits")
    attrs |= {"head_hash": head_hash, "store_features": store_features}
    if kind == AUGMENTED:
        return attrs
    if tally is not None:
        correct, seen = tally
        attrs |= {"correct_by_corruption": [int(c) for c in correct], "count_by_corruption": [int(n) for n in seen]}
    return attrs


def provenance_conflicts(
    a: Mapping[str, Any], b: Mapping[str, Any], keys: Iterable[str] = LOGIT_IDENTITY_KEYS
) -> list[tuple[str, Any, Any]]:
    """Where two provenances (manifest provenances or shard attributes) disagree, as (key, a's value, b's value).

    Each of `keys` that both record and that differs, then `view` and `targets` (the per-patch targets), which
    every cache has (read with their defaults). A key one side does not record (None) is not known there yet and
    agrees: a features-only slice has no head_hash, a fresh manifest no store_features.
    """
    conflicts = [(k, a.get(k), b.get(k)) for k in keys if None not in (a.get(k), b.get(k)) and a.get(k) != b.get(k)]
    for key, of in (("view", cache_view), ("targets", token_targets_of), ("views", views_of)):
        if of(a) != of(b):
            conflicts.append((key, of(a), of(b)))
    if views_of(a) and views_of(b) and augmentation_of(a) != augmentation_of(b):
        conflicts.append(("augmentation", augmentation_of(a), augmentation_of(b)))
    return conflicts
