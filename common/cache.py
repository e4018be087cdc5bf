"""The teacher-logit cache: HDF5 shards, their attributes, `manifest.json`, verify, merge and the trainer's reader.

CACHE/ holds one HDF5 shard per `shard_size` samples of each split (`train-00000.h5`, ...), each written under
a temporary name and renamed when complete; `head.safetensors`, the linear head that turned the teacher's
features into logits; `manifest.json`, always derived from the shards present, so that resume, slices and
merge share one code path; and, while a run is unfinished, `features/` with the backbone features the head is
fitted on. docs/cache-format.md describes the layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cdeit.common.errors import CdeitError

if TYPE_CHECKING:
    import torch

CACHE_FORMAT = "cdeit-teacher-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
HEAD_FILE = "head.safetensors"
FEATURES_DIR = "features"
LOGITS = "logits"  # shard kind: the cache proper (index, logits, optional float16 features)
FEATURES = "features"  # shard kind: pass-1 work shards (index, float16 features, label, corruption)
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
INFO_KEYS = ("weights_source", "device_type", "resize", "tool_version")  # provenance that may differ per shard
# Written only by caches that differ from the paper's (a clean view or per-patch targets): a shard without them is a
# same-view shard with logits (and its pre-logit `features` when store_features), as every cache before them.
VIEW_KEYS = ("view", "token_targets", "target_grid", "teacher_grid")
VIEWS = ("same", "clean")  # same: the teacher saw each sample itself; clean: its clean source image
TARGETS = ("logits", "embedding", "patches", "attention")  # what a cache can hold, in canonical order
TARGET_DATASETS = {"logits": "logits", "embedding": "features", "patches": "patches", "attention": "attention"}
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
        base = Path(cache_dir) if kind == LOGITS else Path(cache_dir) / FEATURES_DIR
        return base / self.name


def plan_shards(counts: Mapping[str, int], shard_size: int) -> list[ShardSpec]:
    """Every shard of every split, in split order then sample order."""
    if shard_size < 1:
        raise CdeitError(f"--shard-size must be at least 1, got {shard_size}.")
    return [
        ShardSpec(split, k, start, min(start + shard_size, n))
        for split, n in counts.items()
        for k, start in enumerate(range(0, n, shard_size))
    ]


def cache_view(attrs: Mapping[str, Any]) -> str:
    """The view of a cache (its manifest provenance) or shard (its attributes): `same` unless written `clean`."""
    return attrs.get("view") or "same"


def cache_targets(attrs: Mapping[str, Any]) -> list[str]:
    """What a cache (manifest provenance) or logit shard (attributes) holds, in TARGETS order."""
    if attrs.get("targets"):
        return list(attrs["targets"])
    held = {"logits", *(["embedding"] if attrs.get("store_features") else []), *(attrs.get("token_targets") or [])}
    return [t for t in TARGETS if t in held]


def token_targets_of(attrs: Mapping[str, Any]) -> list[str]:
    """The per-patch targets (patches, attention) of a cache or shard."""
    return [t for t in cache_targets(attrs) if t in ("patches", "attention")]


# --------------------------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes (the checksum manifest.json records for each shard)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


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

    from cdeit.common.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for name, value in arrays.items():
                f.create_dataset(name, data=value, track_times=False)  # no timestamps: same inputs, same bytes
            for key, value in attrs.items():
                f.attrs[key] = _to_attr(value)
        if pause := float(os.environ.get(TEST_PAUSE_ENV, "0") or 0):
            import time

            time.sleep(pause)


def read_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """A shard's attributes as plain Python values."""
    import h5py

    with h5py.File(path, "r") as f:
        return {k: _from_attr(v) for k, v in f.attrs.items()}


def read_arrays(path: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Datasets of a shard as numpy arrays (all of them when `names` is None)."""
    import h5py

    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in (names if names is not None else list(f.keys()))}


def shard_problem(path: Path, spec: ShardSpec, kind: str, expect: Mapping[str, Any]) -> str | None:
    """Why the shard at `path` is not a complete, sound shard for `spec` with attributes `expect` (None if it is)."""
    try:
        attrs = read_attrs(path)
        arrays = read_arrays(path)
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError... for damaged files
        return f"{path.name} cannot be read ({type(exc).__name__})"
    want = {"kind": kind, "split": spec.split, "shard": spec.shard, "start": spec.start, "stop": spec.stop, **expect}
    wrong = [k for k, v in want.items() if attrs.get(k) != _from_attr(_to_attr(v))]
    if wrong:
        return f"{path.name} has other {', '.join(wrong)} than this run"
    if not np.array_equal(arrays.get("index"), np.arange(spec.start, spec.stop)):
        return f"{path.name} does not hold indices {spec.start}..{spec.stop - 1}"
    for name in ("logits", "features", "patches", "attention"):
        if name in arrays and not np.isfinite(arrays[name]).all():
            return f"{path.name} holds NaN or infinite {name}"
    return None


# --------------------------------------------------------------------------------------------- manifest


def _shard_files(cache_dir: Path, kind: str) -> list[Path]:
    base = cache_dir if kind == LOGITS else cache_dir / FEATURES_DIR
    return sorted(p for p in base.glob("*.h5") if not p.name.startswith("."))


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
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    info: dict[str, Any] = {"file": HEAD_FILE, "hash": tensor_hash(tensors)}
    for k, v in meta.items():
        try:
            info[k] = json.loads(v)
        except json.JSONDecodeError:
            info[k] = v
    return info


def _split_order(split: str) -> tuple[int, str]:
    from cdeit.common.dataset import SPLITS

    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def build_manifest(cache_dir: str | os.PathLike, fallback: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Derive the manifest from the shards present: provenance, splits, accuracy, and each shard's checksum.

    `fallback` is the provenance to record while no shard exists yet (a fresh run's first manifest).
    """
    from cdeit.common import __version__

    cache_dir = Path(cache_dir)
    logit_files, feature_files = _shard_files(cache_dir, LOGITS), _shard_files(cache_dir, FEATURES)
    logit_attrs = [read_attrs(p) for p in logit_files]
    feature_attrs = [read_attrs(p) for p in feature_files]
    everything = logit_attrs + feature_attrs
    provenance = dict(fallback or {})
    if everything:
        provenance |= _common_values(everything, IDENTITY_KEYS, str(cache_dir))
        provenance |= _common_values(logit_attrs, ("head_hash", "store_features"), str(cache_dir))
        provenance |= {k: everything[0].get(k) for k in INFO_KEYS}
        provenance |= _common_values(everything, VIEW_KEYS, str(cache_dir))
    splits = {}
    for split in sorted({a["split"] for a in everything}, key=_split_order):
        split_attrs = [a for a in everything if a["split"] == split]
        _common_values(split_attrs, ("data_fingerprint", "split_count"), f"{cache_dir} (split {split})")
        splits[split] = _split_summary(split_attrs, [a for a in logit_attrs if a["split"] == split])
    classes = provenance.get("classes") or []
    return {
        "format": CACHE_FORMAT,
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "complete": bool(splits) and all(s["complete"] for s in splits.values()),
        "provenance": _provenance(provenance),
        "head": read_head_meta(cache_dir),
        "dataset": {"classes": classes, "num_classes": len(classes), "corruptions": provenance.get("corruptions")},
        "splits": splits,
        "shards": [_record(cache_dir, p, a) for p, a in zip(logit_files, logit_attrs, strict=True)],
        "feature_shards": [_record(cache_dir, p, a) for p, a in zip(feature_files, feature_attrs, strict=True)],
    }


def _provenance(values: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's provenance: identity and info keys, then the view and targets (always spelled out)."""
    provenance = {k: values.get(k) for k in (*LOGIT_IDENTITY_KEYS, *INFO_KEYS) if k in values}
    provenance |= {"view": cache_view(values), "targets": cache_targets(values)}
    return provenance | {k: values[k] for k in ("target_grid", "teacher_grid") if values.get(k) is not None}


def write_manifest(cache_dir: str | os.PathLike, fallback: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Rebuild CACHE/manifest.json from the shards present and return it."""
    from cdeit.common.atomic import write_json

    manifest = build_manifest(cache_dir, fallback)
    write_json(Path(cache_dir) / MANIFEST, manifest)
    return manifest


def read_cache_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """Read CACHE/manifest.json; every problem is one sentence naming the file."""
    cache_dir = Path(cache_dir)
    path = cache_dir / MANIFEST
    if not cache_dir.is_dir():
        raise CdeitError(f"teacher cache {cache_dir} does not exist; build one with `cdeit precompute-teacher`.")
    if not path.is_file():
        raise CdeitError(
            f"{path} is missing, so {cache_dir} is not a teacher cache; build one with `cdeit precompute-teacher`."
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CdeitError(f"{path} is not valid JSON ({exc}); rerun `cdeit precompute-teacher` to rebuild it.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise CdeitError(
            f"{path} is not the manifest of a teacher cache; pass a directory made by `cdeit precompute-teacher`."
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CdeitError(
            f"{path} is {manifest.get('format')!r} version {manifest.get('format_version')!r}, but this cdeit reads "
            f"{CACHE_FORMAT!r} version {FORMAT_VERSION}; recompute the cache with this version."
        )
    return manifest


def cache_info(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest plus the size of the cache on disk (what `cdeit cache info` prints)."""
    cache_dir = Path(cache_dir)
    manifest = read_cache_manifest(cache_dir)
    size = sum(p.stat().st_size for p in cache_dir.rglob("*") if p.is_file())
    return manifest | {"bytes_on_disk": size}


# --------------------------------------------------------------------------------------------- verify


def verify_cache(cache_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Everything wrong with a cache, one sentence each: checksums, coverage, NaN/inf, head, fingerprints."""
    cache_dir = Path(cache_dir)
    try:
        manifest = read_cache_manifest(cache_dir)
    except CdeitError as exc:
        return [str(exc)]
    problems = _check_files(cache_dir, manifest)
    problems += _check_contents(cache_dir, manifest)
    problems += _check_head(cache_dir, manifest)
    if data_dir is not None:
        problems += _check_data(manifest, data_dir)
    return problems


def _check_files(cache_dir: Path, manifest: Mapping[str, Any]) -> list[str]:
    problems = []
    listed = {e["file"] for e in manifest["shards"]}
    for entry in manifest["shards"]:
        path = cache_dir / entry["file"]
        if not path.is_file():
            problems.append(f"shard {entry['file']} listed in the manifest is missing.")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"shard {entry['file']} does not match its checksum in the manifest (damaged or changed).")
    for path in _shard_files(cache_dir, LOGITS):
        if path.name not in listed:
            problems.append(f"shard {path.name} is not listed in the manifest; rerun `cdeit precompute-teacher`.")
    return problems


def _check_contents(cache_dir: Path, manifest: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    provenance = manifest["provenance"]
    seen = {split: np.zeros(info["count"], np.int64) for split, info in manifest["splits"].items()}
    sources: list[np.ndarray] = []  # clean view: the source id of every row
    for entry in manifest["shards"]:
        path = cache_dir / entry["file"]
        if not path.is_file():
            continue
        try:
            attrs, arrays = read_attrs(path), read_arrays(path)
        except Exception as exc:
            problems.append(f"shard {entry['file']} cannot be read as HDF5 ({type(exc).__name__}).")
            continue
        wrong = [k for k in LOGIT_IDENTITY_KEYS if k in provenance and attrs.get(k) != provenance[k]]
        wrong += ["view"] if cache_view(attrs) != cache_view(provenance) else []
        wrong += ["targets"] if token_targets_of(attrs) != token_targets_of(provenance) else []
        if wrong:
            problems.append(f"shard {entry['file']} disagrees with the manifest on {', '.join(wrong)}.")
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
    for key in ("logits", "features", "patches", "attention"):
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


# --------------------------------------------------------------------------------------------- merge


def merge_caches(sources: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict[str, Any]:
    """Join caches (slices computed on different machines) into `out`, refusing to mix runs; returns the manifest."""
    from cdeit.common.atomic import remove_stale_tmp

    out = Path(out)
    paths = [Path(s) for s in sources]
    if any(p.resolve() == out.resolve() for p in paths):
        raise CdeitError(f"--out {out} is also one of the caches to merge; write the merged cache to a new directory.")
    manifests = [read_cache_manifest(p) for p in paths]
    if (out / MANIFEST).is_file():
        paths, manifests = [*paths, out], [*manifests, read_cache_manifest(out)]
    _check_joinable(paths, manifests)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out)
    with_logits = {e["file"] for m in manifests for e in m["shards"]}
    for path, manifest in zip(paths, manifests, strict=True):
        if path == out:
            continue
        for entry in manifest["shards"]:
            _copy_verified(path, out, entry)
        for entry in manifest["feature_shards"]:
            if Path(entry["file"]).name not in with_logits:  # features are needed only where logits are missing
                _copy_verified(path, out, entry)
        if (path / HEAD_FILE).is_file() and not (out / HEAD_FILE).is_file():
            _copy_file(path / HEAD_FILE, out / HEAD_FILE)
    for entry in (e for m in manifests for e in m["feature_shards"]):
        if Path(entry["file"]).name in with_logits:  # features whose logits exist are no longer needed
            (out / entry["file"]).unlink(missing_ok=True)
    return write_manifest(out)


def _check_joinable(paths: Sequence[Path], manifests: Sequence[Mapping[str, Any]]) -> None:
    first_path, first = paths[0], manifests[0]
    for path, m in zip(paths[1:], manifests[1:], strict=True):
        for key in LOGIT_IDENTITY_KEYS:
            a, b = first["provenance"].get(key), m["provenance"].get(key)
            if a is not None and b is not None and a != b:
                what = {"teacher": "teachers", "weights_hash": "teacher weights", "head_hash": "heads"}.get(key, key)
                raise CdeitError(
                    f"{first_path} and {path} differ in {key} ({a} vs {b}); cannot mix {what} in one cache."
                )
        for what, of in (("view", cache_view), ("per-patch targets", token_targets_of)):
            if of(first["provenance"]) != of(m["provenance"]):
                raise CdeitError(
                    f"{first_path} and {path} differ in {what} ({of(first['provenance'])} vs {of(m['provenance'])}); "
                    "cannot mix them in one cache."
                )
        for split in set(first["splits"]) & set(m["splits"]):
            a, b = first["splits"][split]["fingerprint"], m["splits"][split]["fingerprint"]
            if a != b:
                raise CdeitError(
                    f"{first_path} and {path} were computed for different data (split {split}: {a} vs {b})."
                )
        heads = [x["head"]["hash"] for x in (first, m) if x.get("head")]
        if len(set(heads)) > 1:
            raise CdeitError(
                f"{first_path} and {path} hold different heads ({heads[0]} vs {heads[1]}); cannot mix heads."
            )


def _copy_verified(src_dir: Path, out: Path, entry: Mapping[str, Any]) -> None:
    src, dst = src_dir / entry["file"], out / entry["file"]
    if not src.is_file():
        raise CdeitError(f"{src} listed in {src_dir / MANIFEST} is missing; run `cdeit cache verify {src_dir}`.")
    if dst.is_file():
        if sha256_file(dst) != entry["sha256"]:
            raise CdeitError(f"{entry['file']} differs between {src_dir} and {out}; these caches cannot be merged.")
        return
    _copy_file(src, dst)
    if sha256_file(dst) != entry["sha256"]:
        dst.unlink()
        raise CdeitError(
            f"{src} does not match its checksum in {src_dir / MANIFEST}; run `cdeit cache verify {src_dir}`."
        )


def _copy_file(src: Path, dst: Path) -> None:
    from cdeit.common.atomic import atomic_path

    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


# --------------------------------------------------------------------------------------------- the reader


def load_teacher_logits(
    cache_dir: str | os.PathLike,
    data: str | os.PathLike | Mapping[str, Any],
    split: str = "train",
    device: str | torch.device = "cpu",
    checksums: bool = True,
) -> torch.Tensor:
    """The cached teacher logits of one split as a float32 `(N, classes)` tensor on `device`, row i = sample i.

    `data` is the dataset directory (or its loaded manifest). Refuses, one sentence each, a cache for another
    dataset, another class count, another split or with missing indices. `checksums=True` hashes every shard
    file against the manifest (about 1 s per GB); False checks sizes only. Values are always checked finite.
    """
    import torch

    cache_dir = Path(cache_dir)
    manifest = read_cache_manifest(cache_dir)
    if cache_view(manifest["provenance"]) != "same":  # rows keyed by source: join them to the split's samples
        targets = load_teacher_targets(cache_dir, data, split, device, ("logits",), checksums)
        if targets.split_source is None:
            raise CdeitError(
                f"cache {cache_dir} is keyed by source id; pass the dataset directory (not its manifest) to join it."
            )
        return targets.gather(None, targets.split_source)["logits"]
    data_manifest, data_name = _data_manifest(data)
    info = _reader_split(manifest, data_manifest, split, cache_dir, data_name)
    table = np.full((info["count"], manifest["dataset"]["num_classes"]), np.nan, np.float32)
    filled = np.zeros(info["count"], np.int64)
    for entry in (e for e in manifest["shards"] if e["split"] == split):
        index, logits = _read_checked(cache_dir, entry, checksums)
        table[index] = logits
        np.add.at(filled, index, 1)
    if (missing := int((filled == 0).sum())) or (filled > 1).any():
        raise CdeitError(
            f"cache {cache_dir} lacks logits for {missing:,} of {info['count']:,} {split} indices (or repeats some); "
            "finish it with `cdeit precompute-teacher` (or merge the missing slices) and run `cdeit cache verify`."
        )
    return torch.from_numpy(table).to(device)


def _data_manifest(data: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    if isinstance(data, Mapping):
        return data, "the dataset"
    from cdeit.common.dataset import load_manifest

    return load_manifest(data), f"dataset {data}"


def _reader_split(
    manifest: Mapping[str, Any], data: Mapping[str, Any], split: str, cache_dir: Path, data_name: str
) -> Mapping[str, Any]:
    """The cache's entry for `split` after checking it belongs to this dataset, its classes and this split."""
    from cdeit.common.dataset import split_info

    data_split = split_info(data, split, data_name)
    classes, cached_classes = list(data.get("classes", [])), manifest["dataset"]["classes"]
    if len(classes) != len(cached_classes):
        raise CdeitError(
            f"cache {cache_dir} holds {len(cached_classes)}-class logits but {data_name} has {len(classes)} classes; "
            "recompute the cache for this dataset."
        )
    if classes != cached_classes:
        raise CdeitError(f"cache {cache_dir} was computed for classes {cached_classes}, not {classes} of {data_name}.")
    info = manifest["splits"].get(split)
    if info is None:
        raise CdeitError(
            f"cache {cache_dir} has no logits for split {split!r} "
            f"(it holds {', '.join(manifest['splits']) or 'none'}); "
            f"rerun `cdeit precompute-teacher --splits {split}` into it."
        )
    if info["fingerprint"] != data_split["fingerprint"]:
        other = [s for s, e in data.get("splits", {}).items() if e["fingerprint"] == info["fingerprint"]]
        if other:
            raise CdeitError(
                f"the {split} logits in cache {cache_dir} were computed for the {other[0]} split of {data_name}."
            )
        raise CdeitError(
            f"cache {cache_dir} was computed for another dataset than {data_name} (split {split} fingerprint "
            f"{info['fingerprint'][:19]}... vs {data_split['fingerprint'][:19]}...); recompute it for this dataset."
        )
    return info


def _read_checked(cache_dir: Path, entry: Mapping[str, Any], checksums: bool) -> tuple[np.ndarray, np.ndarray]:
    path = cache_dir / entry["file"]
    hint = f"run `cdeit cache verify {cache_dir}`"
    if not path.is_file():
        raise CdeitError(f"shard {path} listed in the cache manifest is missing; {hint}.")
    if path.stat().st_size != entry["bytes"] or (checksums and sha256_file(path) != entry["sha256"]):
        raise CdeitError(f"shard {path} does not match its checksum in the manifest; {hint}.")
    arrays = read_arrays(path, ("index", "logits"))
    if not np.isfinite(arrays["logits"]).all():
        raise CdeitError(f"shard {path} holds NaN or infinite logits; {hint}.")
    return arrays["index"], arrays["logits"].astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------- targets for training


@dataclass
class TeacherTargets:
    """Cached teacher outputs on the device and how a batch finds its rows.

    `tensors`: name -> (rows, ...): `logits` float32 (R, classes); `embedding` (R, D), `patches` (R, 64, D) and
    `attention` (R, 64) float16. Same view: row i is sample i of the split (`rows(index)` is the index).
    Clean view: one row per source photograph; `row_of_source` (max id + 1,) int64 maps a source id to its row
    (-1 where the cache has none), so a batch's join is one gather on the device. `split_source` (N,) holds
    the split's source ids (clean view, when the dataset directory was given).
    """

    view: str
    tensors: dict[str, torch.Tensor]
    row_of_source: torch.Tensor | None = None
    split_source: torch.Tensor | None = None

    @property
    def key(self) -> str:
        """The sample field the rows are keyed by."""
        return "source" if self.view == "clean" else "index"

    def rows(self, index: torch.Tensor | None, source: torch.Tensor | None = None) -> torch.Tensor:
        """The table rows of a batch: its `index` (same view) or the rows of its `source` ids (clean view)."""
        if self.row_of_source is None:
            if index is None:
                raise CdeitError("a same-view cache is joined by sample index: pass the batch's `index` field.")
            return index
        if source is None:
            raise CdeitError("a clean-view cache is joined by source id: load the batch's `source` field and pass it.")
        return self.row_of_source[source]

    def gather(
        self, index: torch.Tensor | None, source: torch.Tensor | None = None, names: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """The batch's rows of every table (or of `names`), as stored (float16 features: cast them to compute)."""
        rows = self.rows(index, source)
        return {k: self.tensors[k][rows] for k in (self.tensors if names is None else names)}


def load_teacher_targets(
    cache_dir: str | os.PathLike,
    data: str | os.PathLike | Mapping[str, Any],
    split: str = "train",
    device: str | torch.device = "cpu",
    targets: Sequence[str] = ("logits",),
    checksums: bool = True,
) -> TeacherTargets:
    """The cache's `targets` (logits, embedding, patches, attention) for one split, ready to join on `device`.

    A same-view cache gives one row per sample of `split` (joined by index, as `load_teacher_logits`); a
    clean-view cache one row per source photograph of the dataset's sources.beton (joined by source id).
    Refuses, one sentence each, targets the cache lacks, a view it cannot join, and everything
    `load_teacher_logits` refuses.
    """
    import torch

    cache_dir = Path(cache_dir)
    manifest = read_cache_manifest(cache_dir)
    provenance, view = manifest["provenance"], cache_view(manifest["provenance"])
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise CdeitError(f"teacher target {unknown[0]!r} is unknown; choose from {', '.join(TARGETS)}.")
    missing = [t for t in targets if t not in cache_targets(provenance)]
    if missing:
        held = cache_targets(provenance)
        want = ",".join(t for t in TARGETS if t in {*held, *targets})
        raise CdeitError(
            f"cache {cache_dir} holds no {' or '.join(missing)} targets (it holds {', '.join(held)}); "
            f"recompute it with `cdeit precompute-teacher --view {view} --targets {want}`."
        )
    data_manifest, data_name = _data_manifest(data)
    if view == "same":
        info = _reader_split(manifest, data_manifest, split, cache_dir, data_name)
        tables, _ = _read_tables(cache_dir, manifest, split, info["count"], targets, checksums)
        return TeacherTargets("same", {k: torch.from_numpy(v).to(device) for k, v in tables.items()})
    if view != "clean":
        raise CdeitError(
            f"cache {cache_dir} has view {view!r}, which this cdeit cannot join to samples; "
            "recompute it with `cdeit precompute-teacher --view same` or `--view clean`."
        )
    info = _reader_sources(manifest, data_manifest, split, cache_dir, data_name)
    tables, ids = _read_tables(cache_dir, manifest, SOURCES_SPLIT, info["count"], targets, checksums, ("source",))
    source = ids["source"]
    if len(np.unique(source)) != len(source) or (len(source) and source.min() < 0):
        raise CdeitError(f"cache {cache_dir} repeats source ids or holds negative ones; run `cdeit cache verify`.")
    lookup = np.full(int(source.max()) + 1 if len(source) else 0, -1, np.int64)
    lookup[source] = np.arange(len(source))
    split_source = _split_sources(data, split)
    if split_source is not None:
        outside = split_source >= len(lookup)
        absent = int(outside.sum() + (lookup[split_source[~outside]] < 0).sum())
        if absent:
            raise CdeitError(
                f"cache {cache_dir} has no row for {absent:,} {split} samples' source photographs; recompute it "
                f"with `cdeit precompute-teacher --view clean` for {data_name}."
            )
    return TeacherTargets(
        "clean",
        {k: torch.from_numpy(v).to(device) for k, v in tables.items()},
        row_of_source=torch.from_numpy(lookup).to(device),
        split_source=None if split_source is None else torch.from_numpy(split_source).to(device),
    )


def _reader_sources(
    manifest: Mapping[str, Any], data: Mapping[str, Any], split: str, cache_dir: Path, data_name: str
) -> Mapping[str, Any]:
    """The cache's source rows after checking they are this dataset's sources.beton (and the split exists)."""
    from cdeit.common.dataset import split_info

    split_info(data, split, data_name)
    classes, cached_classes = list(data.get("classes", [])), manifest["dataset"]["classes"]
    if classes != cached_classes:
        raise CdeitError(f"cache {cache_dir} was computed for classes {cached_classes}, not {classes} of {data_name}.")
    info, entry = manifest["splits"].get(SOURCES_SPLIT), data.get("source_images")
    if entry is None:
        raise CdeitError(
            f"{data_name} has no {SOURCES_SPLIT}.beton (one clean image per source photograph), which the clean-view "
            f"cache {cache_dir} is keyed by; rebuild the dataset with the current `cdeit data prepare`."
        )
    if info is None:
        raise CdeitError(f"cache {cache_dir} is marked clean-view but holds no source rows; run `cdeit cache verify`.")
    if info["fingerprint"] != entry["fingerprint"]:
        raise CdeitError(
            f"cache {cache_dir} holds the teacher's outputs for other source images than {data_name}'s "
            f"{SOURCES_SPLIT}.beton; recompute it with `cdeit precompute-teacher --view clean` for this dataset."
        )
    return info


def _split_sources(data: str | os.PathLike | Mapping[str, Any], split: str) -> np.ndarray | None:
    """The `source` field of a split in index order (None when only a manifest was given)."""
    if isinstance(data, Mapping):
        return None
    from cdeit.common.dataset import beton_path, read_split

    return read_split(beton_path(data, split), fields=("source",))["source"].astype(np.int64)


def _read_tables(
    cache_dir: Path,
    manifest: Mapping[str, Any],
    split: str,
    count: int,
    targets: Sequence[str],
    checksums: bool,
    keys: Sequence[str] = (),
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every row of `split` for each target (row = `index`), plus the integer `keys` per row; checks coverage."""
    hint = f"run `cdeit cache verify {cache_dir}`"
    tables: dict[str, np.ndarray] = {}
    ints = {k: np.zeros(count, np.int64) for k in keys}
    filled = np.zeros(count, np.int64)
    for entry in (e for e in manifest["shards"] if e["split"] == split):
        path = cache_dir / entry["file"]
        if not path.is_file():
            raise CdeitError(f"shard {path} listed in the cache manifest is missing; {hint}.")
        if path.stat().st_size != entry["bytes"] or (checksums and sha256_file(path) != entry["sha256"]):
            raise CdeitError(f"shard {path} does not match its checksum in the manifest; {hint}.")
        names = [TARGET_DATASETS[t] for t in targets]
        try:
            arrays = read_arrays(path, ("index", *keys, *names))
        except KeyError:
            raise CdeitError(f"shard {path} lacks some of {', '.join(names)}; {hint}.") from None
        index = arrays["index"]
        for target, name in zip(targets, names, strict=True):
            values = arrays[name]
            if not np.isfinite(values).all():
                raise CdeitError(f"shard {path} holds NaN or infinite {name}; {hint}.")
            if target not in tables:
                dtype = np.float32 if target == "logits" else np.float16
                tables[target] = np.zeros((count, *values.shape[1:]), dtype)
            tables[target][index] = values
        for k in keys:
            ints[k][index] = arrays[k]
        np.add.at(filled, index, 1)
    if (missing := int((filled == 0).sum())) or (filled > 1).any():
        raise CdeitError(
            f"cache {cache_dir} lacks rows for {missing:,} of {count:,} {split} indices (or repeats some); "
            "finish it with `cdeit precompute-teacher` (or merge the missing slices) and run `cdeit cache verify`."
        )
    return tables, ints
