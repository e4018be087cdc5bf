"""The one reader of CACHE/manifest.json and of a shard's attributes: every key a command uses is checked here.

A cache may come from a collaborator, so what it says is untrusted input: each key is checked for presence, type
and range, and each file it lists must be a plain `.h5` name inside the cache (in `features/` or `augmented/` for
those kinds), reached without a symlink out of the cache. A problem is one sentence naming the file and the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cdeit.common.atomic import NUMBER, field, inside, plain_name, string_list
from cdeit.common.cache.format import AUGMENTED_DIR, CACHE_FORMAT, FEATURES_DIR, FORMAT_VERSION, LOGITS
from cdeit.common.errors import CdeitError

# the manifest's lists of shards and the folder (inside the cache) each one's files live in
SHARD_LISTS = {"shards": "", "feature_shards": FEATURES_DIR, "augmented_shards": AUGMENTED_DIR}
OPTIONAL = {"optional": True}


def read_cache_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """Read CACHE/manifest.json; every problem (a key missing, mistyped or out of range, a shard path leading
    outside the cache) is one sentence naming the file and the key."""
    from cdeit.common.atomic import read_manifest_json

    cache_dir = Path(cache_dir)
    path, manifest = read_manifest_json(cache_dir, "a teacher cache", "cdeit precompute-teacher")
    if manifest.get("format") != CACHE_FORMAT:
        raise CdeitError(
            f"{path} is not the manifest of a teacher cache; pass a directory made by `cdeit precompute-teacher`."
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CdeitError(
            f"{path} is {manifest.get('format')!r} version {manifest.get('format_version')!r}, but this cdeit reads "
            f"{CACHE_FORMAT!r} version {FORMAT_VERSION}; recompute the cache with this version."
        )
    check_manifest(cache_dir, path, manifest)
    return manifest


def check_manifest(cache_dir: Path, path: Path, manifest: Mapping[str, Any]) -> None:
    """Every key of a cache manifest that cdeit reads, with a sentence naming `path` and the first bad key."""
    fix = f"rebuild it with `cdeit precompute-teacher` on {cache_dir} (or get an intact copy)"
    name = str(path)
    field(manifest, "complete", bool, name, fix)
    _check_provenance(field(manifest, "provenance", dict, name, fix), name, fix)
    dataset = field(manifest, "dataset", dict, name, fix)
    string_list(dataset, "classes", name, fix, at="dataset.")
    field(dataset, "num_classes", int, name, fix, at="dataset.", minimum=0)
    if dataset.get("corruptions") is not None:
        string_list(dataset, "corruptions", name, fix, at="dataset.")
    for split, info in field(manifest, "splits", dict, name, fix).items():
        _check_split(info, name, fix, f"splits.{split}")
    head = field(manifest, "head", (dict, type(None)), name, fix, **OPTIONAL)
    if head is not None:
        field(head, "hash", str, name, fix, at="head.")
    for key, sub in SHARD_LISTS.items():
        entries = field(manifest, key, list, name, fix, optional=key == "augmented_shards") or []
        for k, entry in enumerate(entries):
            _check_entry(cache_dir, entry, sub, name, fix, f"{key}[{k}]")
    augmented = field(manifest, "augmented", dict, name, fix, **OPTIONAL)
    if augmented:
        _check_augmented(augmented, name, fix)
    check_records(manifest, name, fix)


# the records a precompute adds to what the shards say: the fitted temperature and each pass's throughput
RECORD_KEYS = ("calibration", "throughput")
PASSES = ("features", "logits")


def check_records(manifest: Mapping[str, Any], name: str, fix: str) -> None:
    """The optional `calibration` (temperature scaling on val) and `throughput` (per pass) records."""
    calibration = field(manifest, "calibration", (dict, type(None)), name, fix, **OPTIONAL)
    if calibration:
        at = "calibration."
        field(calibration, "temperature", NUMBER, name, fix, at=at, minimum=1e-6)
        field(calibration, "count", int, name, fix, at=at, minimum=1)
        for key in ("ece_before", "ece_after", "nll_before", "nll_after"):
            field(calibration, key, NUMBER, name, fix, at=at, minimum=0)
        field(calibration, "split", str, name, fix, at=at)
        field(calibration, "head_hash", (str, type(None)), name, fix, at=at)
    throughput = field(manifest, "throughput", (dict, type(None)), name, fix, **OPTIONAL) or {}
    for key, record in throughput.items():
        at = f"throughput.{key}."
        if key not in PASSES or not isinstance(record, dict):
            label = f"throughput.{key}"
            raise CdeitError(f"{name} has {label!r}, which is not a pass ({', '.join(PASSES)}); {fix}.")
        field(record, "images", int, name, fix, at=at, minimum=1)
        field(record, "seconds", NUMBER, name, fix, at=at, minimum=1e-9)
        field(record, "images_per_s", NUMBER, name, fix, at=at, minimum=1e-9)
        for text in ("device", "device_name", "compute_dtype"):
            field(record, text, str, name, fix, at=at)
        field(record, "batch_size", int, name, fix, at=at, minimum=1)


def _check_split(info: Any, name: str, fix: str, at: str) -> None:
    if not isinstance(info, dict):
        raise CdeitError(f"{name} has {at!r} that is not an object; {fix}.")
    at += "."
    for key in ("count", "num_shards", "shards_with_logits"):
        field(info, key, int, name, fix, at=at, minimum=0)
    field(info, "fingerprint", str, name, fix, at=at)
    field(info, "complete", bool, name, fix, at=at)
    field(info, "accuracy", (*NUMBER, type(None)), name, fix, at=at)
    field(info, "accuracy_by_corruption", dict, name, fix, at=at)


def _check_entry(cache_dir: Path, entry: Any, sub: str, name: str, fix: str, at: str) -> None:
    """One listed shard: its keys, and a file name that stays inside the cache (in `sub` for its kind)."""
    if not isinstance(entry, dict):
        raise CdeitError(f"{name} has {at!r} that is not an object; {fix}.")
    at += "."
    file = field(entry, "file", str, name, fix, at=at)
    folder, _, base = file.rpartition("/") if sub else ("", "", file)
    if folder != sub:
        raise CdeitError(f"{name} has {at + 'file'!r} = {file!r}, which is not a shard in {sub}/ of the cache; {fix}.")
    plain_name(base, name, at + "file", fix, ".h5")
    inside(cache_dir, cache_dir / file, name, "shard", fix)
    field(entry, "split", str, name, fix, at=at)
    for key in ("shard", "start", "stop", "bytes"):
        field(entry, key, int, name, fix, at=at, minimum=0)
    field(entry, "sha256", str, name, fix, at=at)


def _check_provenance(p: Mapping[str, Any], name: str, fix: str) -> None:
    """The provenance keys commands read; absent keys are those a cache of that kind does not write."""
    at = "provenance."
    for key in ("teacher", "weights_hash", "head_hash", "view", "teacher_spec", "teacher_module", "interpolation",
                "teacher_run", "teacher_run_sha256", "teacher_run_config"):  # fmt: skip
        field(p, key, (str, type(None)), name, fix, at=at, optional=True)
    for key in ("targets", "token_targets", "classes", "corruptions"):
        if p.get(key) is not None:
            string_list(p, key, name, fix, at=at)
    for key in ("random_weights", "store_features"):
        field(p, key, (bool, type(None)), name, fix, at=at, optional=True)
    for key, least in (("shard_size", 1), ("views", 0)):
        if p.get(key) is not None:
            field(p, key, int, name, fix, at=at, minimum=least)
    for key in ("target_grid", "teacher_grid", "mean", "std", "input_size"):
        field(p, key, (list, type(None)), name, fix, at=at, optional=True)
    if p.get("views"):  # a K-view cache: the settings its views are replayed with
        from cdeit.common.views import AUG_KEYS

        for key in AUG_KEYS:
            field(p, key, NUMBER, name, fix, at=at)


def _check_augmented(a: Mapping[str, Any], name: str, fix: str) -> None:
    """The `augmented` summary of a K-view cache (what `cache info` prints)."""
    at = "augmented."
    for key in ("views", "shards"):
        field(a, key, int, name, fix, at=at, minimum=0)
    for key in ("count", "num_shards", "seed"):
        field(a, key, (int, type(None)), name, fix, at=at)
    field(a, "complete", bool, name, fix, at=at)
    settings = field(a, "settings", dict, name, fix, at=at)
    for key in ("erasing_prob", "mixup_prob", "mixup_alpha", "cutmix_prob", "cutmix_alpha", "render_version"):
        field(settings, key, NUMBER, name, fix, at=at + "settings.")


# --------------------------------------------------------------------------------------------- shard attributes

SHARD_KINDS = (LOGITS, "features", "augmented")


def check_shard_attrs(path: Path, attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """`attrs` when a shard's attributes hold every key the manifest is built from; else a sentence naming it."""
    name, fix = f"shard {path}", "recompute it with `cdeit precompute-teacher` or remove it"
    if attrs.get("format") != CACHE_FORMAT or attrs.get("kind") not in SHARD_KINDS:
        raise CdeitError(f"{name} is not a cdeit cache shard (its format or kind attribute is wrong); {fix}.")
    field(attrs, "split", str, name, fix)
    for key in ("shard", "start", "stop", "split_count"):
        field(attrs, key, int, name, fix, minimum=0)
    field(attrs, "shard_size", int, name, fix, minimum=1)
    field(attrs, "data_fingerprint", str, name, fix)
    corruptions = string_list(attrs, "corruptions", name, fix)
    string_list(attrs, "classes", name, fix)
    if attrs["kind"] == LOGITS:
        for key in ("correct_by_corruption", "count_by_corruption"):
            tally = field(attrs, key, list, name, fix)
            if len(tally) != len(corruptions) or not all(isinstance(v, int) and v >= 0 for v in tally):
                raise CdeitError(f"{name} has {key!r} that is not one count per corruption type; {fix}.")
    return attrs
