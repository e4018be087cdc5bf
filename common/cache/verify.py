"""`cdeit cache verify`: everything wrong with a cache, one sentence each.

Checksums and listing, shard contents against the manifest's provenance (the one agreement check of
common.cache.format), index coverage, NaN/inf values, the head file and, given the dataset, its fingerprints.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cdeit.common.cache.format import (
    AUGMENTED,
    AUGMENTED_DATASETS,
    FLOAT_DATASETS,
    HEAD_FILE,
    LOGITS,
    SOURCES_SPLIT,
    cache_view,
    provenance_conflicts,
    views_of,
)
from cdeit.common.cache.store import (
    read_arrays,
    read_attrs,
    read_cache_manifest,
    read_head_meta,
    sha256_file,
    shard_files,
)
from cdeit.common.errors import CdeitError

RENDER_SAMPLE = 256  # views re-rendered by `cache verify --data` (all of them with --full)


def verify_cache(
    cache_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None, full: bool = False
) -> list[str]:
    """Everything wrong with a cache, one sentence each: checksums, coverage, NaN/inf, head, fingerprints.

    A K-view cache's augmented shards are checked the same way; with `data_dir`, RENDER_SAMPLE of its views
    (every view with `full`) are re-rendered from the dataset and checked against their stored image checksums.
    """
    cache_dir = Path(cache_dir)
    try:
        manifest = read_cache_manifest(cache_dir)
    except CdeitError as exc:
        return [str(exc)]
    problems = _check_files(cache_dir, manifest)
    problems += _check_contents(cache_dir, manifest)
    problems += _check_head(cache_dir, manifest)
    problems += _check_augmented(cache_dir, manifest)
    if data_dir is not None:
        problems += _check_data(manifest, data_dir)
        if views_of(manifest["provenance"]) and not problems:
            problems += _check_renders(cache_dir, data_dir, full)
    return problems


def _check_files(cache_dir: Path, manifest: Mapping[str, Any]) -> list[str]:
    problems = []
    listed = {e["file"] for e in manifest["shards"] + manifest.get("augmented_shards", [])}
    for entry in manifest["shards"] + manifest.get("augmented_shards", []):
        path = cache_dir / entry["file"]
        if not path.is_file():
            problems.append(f"shard {entry['file']} listed in the manifest is missing.")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"shard {entry['file']} does not match its checksum in the manifest (damaged or changed).")
    for path in shard_files(cache_dir, LOGITS) + shard_files(cache_dir, AUGMENTED):
        if path.relative_to(cache_dir).as_posix() not in listed:
            problems.append(f"shard {path.name} is not listed in the manifest; rerun `cdeit precompute-teacher`.")
    return problems


def _check_augmented(cache_dir: Path, manifest: Mapping[str, Any]) -> list[str]:
    """A K-view cache: every train shard has its augmented shard, agreeing with the manifest, finite, K views."""
    provenance, summary = manifest["provenance"], manifest.get("augmented") or {}
    k = views_of(provenance)
    if not k:
        stray = len(manifest.get("augmented_shards", []))
        return [f"{stray} augmented shards in a cache without views; delete CACHE/augmented/."] if stray else []
    problems = []
    if not summary.get("complete"):
        problems.append(f"augmented views: {summary.get('shards')} of {summary.get('num_shards')} train shards.")
    for entry, attrs, arrays in _readable_shards(cache_dir, manifest["augmented_shards"], provenance, problems):
        n = int(attrs.get("stop", 0)) - int(attrs.get("start", 0))
        shape = (n, k, manifest["dataset"]["num_classes"])
        if arrays.get("view_logits") is None or arrays["view_logits"].shape != shape:
            problems.append(f"shard {entry['file']} has no view_logits of shape {shape}.")
        elif (bad := int((~np.isfinite(arrays["view_logits"])).sum())) > 0:
            problems.append(f"shard {entry['file']}: {bad:,} view_logits values are NaN or infinite.")
        if any(arrays.get(name) is None or arrays[name].shape[:2] != (n, k) for name in AUGMENTED_DATASETS[2:]):
            problems.append(f"shard {entry['file']} lacks some view parameters of shape ({n}, {k}, ...).")
    return problems


def _check_renders(cache_dir: Path, data_dir: str | os.PathLike, full: bool) -> list[str]:
    """Re-render a sample of views (all with `full`) from the dataset and compare their image checksums."""
    import torch

    from cdeit.common.cache.augmented import check_renders, load_augmented_views
    from cdeit.common.views import split_tensors

    try:
        views = load_augmented_views(cache_dir, data_dir, "cpu")
    except CdeitError as exc:
        return [str(exc)]
    images = split_tensors(data_dir, "train", "cpu")["image"]
    pairs = views.count * views.views
    chosen = torch.arange(pairs) if full else torch.randperm(pairs, generator=torch.Generator().manual_seed(0))
    chosen = chosen[: pairs if full else RENDER_SAMPLE]
    bad = check_renders(views, images, chosen // views.views, chosen % views.views)
    if not bad:
        return []
    shown = ", ".join(f"sample {i} view {k}" for i, k in bad[:3])
    return [
        f"{len(bad):,} of {len(chosen):,} re-rendered views differ from the image the teacher saw ({shown}"
        f"{', ...' if len(bad) > 3 else ''}); the rows were changed or the data is not the cache's."
    ]


def _readable_shards(
    cache_dir: Path, entries: list[Mapping[str, Any]], provenance: Mapping[str, Any], problems: list[str]
) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any], dict[str, Any]]]:
    """(entry, attrs, arrays) of every listed shard present on disk; an unreadable shard, or one whose
    attributes disagree with the manifest's provenance, adds its sentence to `problems` (listing and checksums
    are checked elsewhere)."""
    for entry in entries:
        path = cache_dir / entry["file"]
        if not path.is_file():
            continue
        try:
            attrs, arrays = read_attrs(path), read_arrays(path)
        except CdeitError as exc:  # a shard that would read data outside itself
            problems.append(str(exc))
            continue
        except Exception as exc:
            problems.append(f"shard {entry['file']} cannot be read as HDF5 ({type(exc).__name__}).")
            continue
        if wrong := [key for key, _, _ in provenance_conflicts(provenance, attrs)]:
            problems.append(f"shard {entry['file']} disagrees with the manifest on {', '.join(wrong)}.")
        yield entry, attrs, arrays


def _check_contents(cache_dir: Path, manifest: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    provenance = manifest["provenance"]
    seen = {split: np.zeros(info["count"], np.int64) for split, info in manifest["splits"].items()}
    sources: list[np.ndarray] = []  # clean view: the source id of every row
    for entry, attrs, arrays in _readable_shards(cache_dir, manifest["shards"], provenance, problems):
        problems += _check_own_attrs(entry, attrs, manifest)
        problems += _check_values(entry["file"], arrays, manifest)
        index = arrays.get("index", np.zeros(0, np.int64))
        counts = seen.get(attrs.get("split"))
        if counts is not None and index.size and (index.min() < 0 or index.max() >= len(counts)):
            problems.append(f"shard {entry['file']} holds indices outside 0..{len(counts) - 1}.")
        elif counts is not None:
            np.add.at(counts, index, 1)
        if cache_view(provenance) == "clean":
            problems += _check_sources(entry["file"], arrays, index, sources)
    if len(sources) and len(np.unique(np.concatenate(sources))) < sum(map(len, sources)):
        problems.append("some source ids occur in more than one row of the clean-view cache.")
    for split, counts in seen.items():
        if (missing := int((counts == 0).sum())) > 0:
            problems.append(f"split {split}: {missing:,} of {len(counts):,} indices have no logits.")
        if (repeated := int((counts > 1).sum())) > 0:
            problems.append(f"split {split}: {repeated:,} indices occur more than once.")
    return problems


def _check_own_attrs(entry: Mapping[str, Any], attrs: Mapping[str, Any], manifest: Mapping[str, Any]) -> list[str]:
    """What a shard says about itself (split, data fingerprint) against its manifest entry and split."""
    name, split = entry["file"], entry.get("split")
    if attrs.get("split") != split:
        return [f"shard {name} holds split {attrs.get('split')!r} but the manifest lists it under {split!r}."]
    want = manifest["splits"].get(split, {}).get("fingerprint")
    if attrs.get("data_fingerprint") != want:
        return [
            f"shard {name} was computed for data fingerprint {attrs.get('data_fingerprint')}, but the manifest "
            f"says {want}: the manifest was edited or the shard comes from another cache."
        ]
    return []


def _check_sources(name: str, arrays: Mapping[str, np.ndarray], index: np.ndarray, sources: list) -> list[str]:
    source = arrays.get("source")
    if source is None or source.shape != index.shape:
        return [f"shard {name} of a clean-view cache has no `source` id per row."]
    sources.append(source)
    return []


def _check_values(name: str, arrays: Mapping[str, np.ndarray], manifest: Mapping[str, Any]) -> list[str]:
    problems = []
    logits = arrays.get("logits")
    classes = manifest["dataset"]["num_classes"]
    if logits is None or logits.ndim != 2 or logits.shape[1] != classes:
        shape = None if logits is None else logits.shape
        problems.append(f"shard {name} has logits of shape {shape}, expected (N, {classes}).")
    for key in FLOAT_DATASETS:
        if key in arrays and (bad := int((~np.isfinite(arrays[key])).sum())) > 0:
            problems.append(f"shard {name}: {bad:,} {key} values are NaN or infinite.")
    return problems


def _check_head(cache_dir: Path, manifest: Mapping[str, Any]) -> list[str]:
    want = manifest["provenance"].get("head_hash")
    if not want:
        return []
    try:
        meta = read_head_meta(cache_dir)
    except Exception as exc:
        return [f"{HEAD_FILE} cannot be read ({type(exc).__name__})."]
    if meta is None:
        return [f"{HEAD_FILE} is missing from {cache_dir}."]
    if meta["hash"] != want:
        return [f"{HEAD_FILE} has hash {meta['hash']} but the shards were computed with head {want}."]
    return []


def _check_data(manifest: Mapping[str, Any], data_dir: str | os.PathLike) -> list[str]:
    from cdeit.common.dataset import load_manifest

    try:
        data = load_manifest(data_dir)
    except CdeitError as exc:
        return [str(exc)]
    problems = []
    if list(data.get("classes", [])) != list(manifest["dataset"]["classes"]):
        problems.append(f"the cache's classes differ from those of dataset {data_dir}.")
    for split, info in manifest["splits"].items():
        entry = data.get("source_images") if split == SOURCES_SPLIT else data.get("splits", {}).get(split)
        if entry is None and split == SOURCES_SPLIT:
            problems.append(f"dataset {data_dir} has no {SOURCES_SPLIT}.beton, which the clean-view cache needs.")
        elif entry is None:
            problems.append(f"dataset {data_dir} has no split {split!r}, which the cache holds.")
        elif entry["fingerprint"] != info["fingerprint"]:
            problems.append(
                f"split {split}: the cache was computed for fingerprint {info['fingerprint']}, "
                f"but dataset {data_dir} has {entry['fingerprint']}."
            )
    return problems
