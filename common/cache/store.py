"""Cache storage: HDF5 shard files and their attributes, checksums, and CACHE/manifest.json built from the shards.

A shard is written under a temporary name and renamed when complete. The manifest is always derived from the
shards present, so that resume, slices and merge share one code path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cdeit.common.cache.format import (
    AUGMENTED,
    AUGMENTED_DIR,
    CACHE_FORMAT,
    FEATURES,
    FEATURES_DIR,
    FLOAT_DATASETS,
    FORMAT_VERSION,
    HEAD_FILE,
    IDENTITY_KEYS,
    INFO_KEYS,
    LOGIT_IDENTITY_KEYS,
    LOGITS,
    MANIFEST,
    TEST_PAUSE_ENV,
    VIEW_KEYS,
    ShardSpec,
    cache_targets,
    cache_view,
    views_of,
)
from cdeit.common.cache.manifest import check_shard_attrs, read_cache_manifest
from cdeit.common.dataset import file_sha256
from cdeit.common.errors import CdeitError
from cdeit.common.views import AUG_KEYS

# --------------------------------------------------------------------------------------------- hashing


sha256_file = file_sha256  # hex sha256 of a file's bytes: what manifest.json records for each shard


def tensor_hash(tensors: Mapping[str, Any]) -> str:
    """sha256 over named tensors in sorted name order (name, dtype, shape and bytes): the weights and head hash."""
    import torch

    h = hashlib.sha256(b"cdeit-tensors-v1\n")
    for name in sorted(tensors):
        t = tensors[name]
        t = torch.from_numpy(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------------------------- shard files


def _to_attr(value: Any) -> Any:
    import h5py

    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, str) for v in value):
            return np.array(value, dtype=h5py.string_dtype())
        if all(isinstance(v, int | np.integer) for v in value):
            return np.array(value, dtype=np.int64)
        return np.array(value, dtype=np.float64)
    return value


def _from_attr(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return [_from_attr(v) for v in value.tolist()]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_shard(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
    """Write one shard under a temporary name, flush it and rename it: a shard with its final name is complete."""
    import h5py

    from cdeit.common.atomic import atomic_path, test_seconds

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, value in arrays.items():
                f.create_dataset(name, data=value, track_times=False)  # no timestamps: same inputs, same bytes
            for key, value in attrs.items():
                f.attrs[key] = _to_attr(value)
        if pause := test_seconds(TEST_PAUSE_ENV):
            import time

            time.sleep(pause)


@contextlib.contextmanager
def open_shard(path: str | os.PathLike) -> Iterator[Any]:
    """An HDF5 shard opened for reading, after refusing what would read outside it: soft or external links,
    groups, virtual datasets and external storage (a shard keeps all of its data in itself)."""
    import h5py

    with h5py.File(path, "r") as f:
        for name in f:
            link = f.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                _outside(path, name, "is a link to elsewhere")
            item = f[name]
            if not isinstance(item, h5py.Dataset):
                _outside(path, name, "is a group, not a dataset")
            if item.is_virtual or item.external:
                _outside(path, name, "keeps its data outside the shard (virtual or external storage)")
        yield f


def _outside(path: str | os.PathLike, name: str, what: str) -> None:
    raise CdeitError(
        f"shard {path}: dataset {name!r} {what}, which a cdeit shard never does; cdeit reads no data outside a "
        "shard: recompute it with `cdeit precompute-teacher` or get an intact copy."
    )


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """A shard's attributes as plain Python values."""
    with open_shard(path) as f:
        return {k: _from_attr(v) for k, v in f.attrs.items()}


def read_arrays(path: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Datasets of a shard as numpy arrays (all of them when `names` is None)."""
    with open_shard(path) as f:
        return {k: f[k][()] for k in (names if names is not None else list(f.keys()))}


def shard_problem(path: Path, spec: ShardSpec, kind: str, expect: Mapping[str, Any]) -> str | None:
    """Why the shard at `path` is not a complete, sound shard for `spec` with attributes `expect` (None if it is)."""
    try:
        attrs = read_attrs(path)
        arrays = read_arrays(path)
    except CdeitError as exc:
        return str(exc).rstrip(".")
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError... for damaged files
        return f"{path.name} cannot be read ({type(exc).__name__})"
    want = {"kind": kind, "split": spec.split, "shard": spec.shard, "start": spec.start, "stop": spec.stop, **expect}
    wrong = [k for k, v in want.items() if attrs.get(k) != _from_attr(_to_attr(v))]
    if wrong:
        return f"{path.name} has other {', '.join(wrong)} than this run"
    if not np.array_equal(arrays.get("index"), np.arange(spec.start, spec.stop)):
        return f"{path.name} does not hold indices {spec.start}..{spec.stop - 1}"
    for name in FLOAT_DATASETS:
        if name in arrays and not np.isfinite(arrays[name]).all():
            return f"{path.name} holds NaN or infinite {name}"
    return None


# --------------------------------------------------------------------------------------------- manifest


def shard_files(cache_dir: Path, kind: str) -> list[Path]:
    """The finished shards of `kind` in a cache directory, by name (temporary files start with a dot)."""
    from cdeit.common.atomic import inside

    base = cache_dir / {LOGITS: "", FEATURES: FEATURES_DIR, AUGMENTED: AUGMENTED_DIR}[kind]
    fix = "remove that link: a cache's shards are its own files"
    found = sorted(p for p in base.glob("*.h5") if not p.name.startswith("."))
    return [inside(cache_dir, p, str(cache_dir), "the shard", fix) for p in found]


def _record(cache_dir: Path, path: Path, attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "file": path.relative_to(cache_dir).as_posix(),
        "split": attrs["split"],
        "shard": attrs["shard"],
        "start": attrs["start"],
        "stop": attrs["stop"],
        "bytes": path.stat().st_size,
        "sha256": sha256_file(path),
    }


def _common_values(attrs: Sequence[Mapping[str, Any]], keys: Iterable[str], where: str) -> dict[str, Any]:
    """The values of `keys` all shards share, or an error naming the first key on which two shards differ."""
    values: dict[str, Any] = {}
    for a in attrs:
        for k in keys:
            if k in values and a.get(k) != values[k]:
                raise CdeitError(
                    f"shards in {where} disagree on {k} ({values[k]!r} vs {a.get(k)!r}); "
                    "they come from different runs: keep one run's shards per cache directory."
                )
            values.setdefault(k, a.get(k))
    return values


def _split_summary(split_attrs: list[Mapping[str, Any]], logit_attrs: list[Mapping[str, Any]]) -> dict[str, Any]:
    first = split_attrs[0]
    n, size = first["split_count"], first["shard_size"]
    num_shards = -(-n // size)
    correct = np.sum([a["correct_by_corruption"] for a in logit_attrs], axis=0) if logit_attrs else None
    seen = np.sum([a["count_by_corruption"] for a in logit_attrs], axis=0) if logit_attrs else None
    summary: dict[str, Any] = {
        "count": n,
        "fingerprint": first["data_fingerprint"],
        "num_shards": num_shards,
        "shards_with_logits": len(logit_attrs),
        "complete": len(logit_attrs) == num_shards,
        "accuracy": None,
        "accuracy_by_corruption": {},
    }
    if seen is not None and seen.sum() > 0:
        summary["accuracy"] = float(correct.sum() / seen.sum())
        names = first["corruptions"]
        summary["accuracy_by_corruption"] = {
            names[i]: float(correct[i] / seen[i]) for i in range(len(names)) if seen[i] > 0
        }
    return summary


def read_head_meta(cache_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The metadata of CACHE/head.safetensors (source, hash, fit settings, accuracy), or None without one."""
    path = Path(cache_dir) / HEAD_FILE
    if not path.is_file():
        return None
    tensors, meta = read_head_file(path)
    return {"file": HEAD_FILE, "hash": tensor_hash(tensors)} | meta


def write_head_file(path: str | os.PathLike, tensors: dict[str, Any], meta: dict[str, Any]) -> None:
    """A head file: safetensors with its metadata values as JSON strings, written atomically."""
    from cdeit.common.atomic import write_safetensors

    write_safetensors(path, tensors, {k: json.dumps(v, sort_keys=True) for k, v in meta.items()})


def read_head_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tensors and the decoded metadata of a head file (sorted by key: safetensors keeps hash-map order)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
            raw = dict(f.metadata() or {})
    except Exception as exc:
        raise CdeitError(f"head file {path} is not a valid .safetensors file ({exc}).") from None
    return tensors, {k: _json_or_text(v) for k, v in sorted(raw.items())}


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _split_order(split: str) -> tuple[int, str]:
    from cdeit.common.dataset import SPLITS

    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def build_manifest(
    cache_dir: str | os.PathLike, fallback: Mapping[str, Any] | None = None, records: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Derive the manifest from the shards present: provenance, splits, accuracy, and each shard's checksum.

    `fallback` is the provenance to record while no shard exists yet (a fresh run's first manifest); `records`
    the precompute's new `calibration` and `throughput`, merged over those of the manifest on disk (records.py).
    """
    from cdeit.common import __version__
    from cdeit.common.cache.records import merged_records

    cache_dir = Path(cache_dir)
    logit_files, feature_files = shard_files(cache_dir, LOGITS), shard_files(cache_dir, FEATURES)
    augmented_files = shard_files(cache_dir, AUGMENTED)
    logit_attrs = [check_shard_attrs(p, read_attrs(p)) for p in logit_files]
    feature_attrs = [check_shard_attrs(p, read_attrs(p)) for p in feature_files]
    augmented_attrs = [check_shard_attrs(p, read_attrs(p)) for p in augmented_files]
    everything = logit_attrs + feature_attrs + augmented_attrs
    provenance = dict(fallback or {})
    if everything:
        provenance |= _common_values(everything, IDENTITY_KEYS, str(cache_dir))
        provenance |= _common_values(logit_attrs, ("head_hash", "store_features"), str(cache_dir))
        provenance |= {k: everything[0].get(k) for k in INFO_KEYS}
        provenance |= _common_values(everything, VIEW_KEYS, str(cache_dir))
        provenance |= _common_values(everything, AUG_KEYS, str(cache_dir))
    splits = {}
    for split in sorted({a["split"] for a in everything}, key=_split_order):
        split_attrs = [a for a in everything if a["split"] == split]
        _common_values(split_attrs, ("data_fingerprint", "split_count"), f"{cache_dir} (split {split})")
        splits[split] = _split_summary(split_attrs, [a for a in logit_attrs if a["split"] == split])
    classes = provenance.get("classes") or []
    augmented = _augmented_summary(provenance, augmented_attrs, splits)
    head = read_head_meta(cache_dir)
    return {
        "format": CACHE_FORMAT,
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "complete": bool(splits) and all(s["complete"] for s in splits.values()) and augmented.get("complete", True),
        "provenance": _provenance(provenance),
        "head": head,
        "dataset": {"classes": classes, "num_classes": len(classes), "corruptions": provenance.get("corruptions")},
        "splits": splits,
        "shards": [_record(cache_dir, p, a) for p, a in zip(logit_files, logit_attrs, strict=True)],
        "feature_shards": [_record(cache_dir, p, a) for p, a in zip(feature_files, feature_attrs, strict=True)],
        "augmented": augmented,
        "augmented_shards": [_record(cache_dir, p, a) for p, a in zip(augmented_files, augmented_attrs, strict=True)],
    } | merged_records(cache_dir, head, records)


def _augmented_summary(
    provenance: Mapping[str, Any], attrs: Sequence[Mapping[str, Any]], splits: Mapping[str, Any]
) -> dict[str, Any]:
    """A K-view cache's views: K, seed, settings, the train rows they cover and whether every shard is here."""
    k = views_of(provenance)
    if not k:
        return {}
    train = splits.get("train") or {}
    summary = {"views": k, "seed": provenance.get("view_seed"), "split": "train", "count": train.get("count")}
    summary |= {"settings": {key[4:]: provenance.get(key) for key in AUG_KEYS if key.startswith("aug_")}}
    summary |= {"shards": len(attrs), "num_shards": train.get("num_shards")}
    return summary | {"complete": bool(train) and len(attrs) == train.get("num_shards")}


def _provenance(values: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's provenance: identity and info keys, then the view and targets (always spelled out)."""
    provenance = {k: values.get(k) for k in (*LOGIT_IDENTITY_KEYS, *INFO_KEYS) if k in values}
    provenance |= {"view": cache_view(values), "targets": cache_targets(values)}
    if views_of(values):
        provenance |= {k: values.get(k) for k in AUG_KEYS}
    return provenance | {k: values[k] for k in ("target_grid", "teacher_grid") if values.get(k) is not None}


def write_manifest(
    cache_dir: str | os.PathLike, fallback: Mapping[str, Any] | None = None, records: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Rebuild CACHE/manifest.json from the shards present (with `records`, see build_manifest) and return it."""
    from cdeit.common.atomic import write_json

    manifest = build_manifest(cache_dir, fallback, records)
    write_json(Path(cache_dir) / MANIFEST, manifest)
    return manifest


def cache_info(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest plus the size of the cache on disk (what `cdeit cache info` prints)."""
    cache_dir = Path(cache_dir)
    manifest = read_cache_manifest(cache_dir)
    size = sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file())
    return manifest | {"bytes_on_disk": size}
