"""The trainer's reader: one call loads a cache's targets for one split onto the device, checked against the data.

`load_teacher_targets` is the one reader; it returns one `TeacherTargets` object, which joins a batch to its
rows with a single gather on the device (by sample index, or by source id for a clean-view cache).
`load_teacher_logits` is the same reader asked for one logit row per sample (what `cdeit evaluate` compares).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cdeit.common.cache.format import (
    SOURCES_SPLIT,
    TARGET_DATASETS,
    TARGETS,
    cache_targets,
    cache_view,
    provenance_conflicts,
)
from cdeit.common.cache.store import read_arrays, read_attrs, read_cache_manifest, sha256_file
from cdeit.common.errors import CdeitError

if TYPE_CHECKING:
    import torch


@dataclass
class TeacherTargets:
    """Cached teacher outputs on the device and how a batch finds its rows.

    `tensors`: name -> (rows, ...): `logits` float32 (R, classes); `embedding` (R, D), `patches` (R, 64, D) and
    `attention` (R, 64) float16. Same view: row i is sample i of the split (`rows(index)` is the index).
    Clean view: one row per source photograph; `row_of_source` (max id + 1,) int64 maps a source id to its row
    (-1 where the cache has none), so a batch's join is one gather on the device. `split_source` (N,) holds
    the split's source ids (clean view, when the dataset directory was given).

    It is the Trainer's teacher (train/core/teachers.py's `TeacherSource`): `fields` names the batch field
    its rows are keyed by, `targets_for` gathers a batch's rows.
    """

    view: str
    tensors: dict[str, torch.Tensor]
    row_of_source: torch.Tensor | None = None
    split_source: torch.Tensor | None = None

    @property
    def key(self) -> str:
        """The sample field the rows are keyed by."""
        return "source" if self.view == "clean" else "index"

    @property
    def fields(self) -> tuple[str, ...]:
        """The batch fields `targets_for` reads."""
        return (self.key,)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of one row of each table (`logits`: (classes,), `patches`: (64, D), ...)."""
        return {k: tuple(v.shape[1:]) for k, v in self.tensors.items()}

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

    def targets_for(self, batch: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, torch.Tensor]:
        """The rows of `names` for a batch given as its fields by name (it reads `index` or `source`)."""
        return self.gather(batch.get("index"), batch.get("source"), names)

    def per_sample(self, name: str) -> torch.Tensor:
        """One row of table `name` per sample of the split, in index order (a clean view joined by source)."""
        if self.row_of_source is None:
            return self.tensors[name]
        if self.split_source is None:
            raise CdeitError("this clean-view cache is keyed by source id; pass the dataset directory to join it.")
        return self.gather(None, self.split_source, (name,))[name]


def load_teacher_targets(
    cache_dir: str | os.PathLike,
    data: str | os.PathLike | Mapping[str, Any],
    split: str = "train",
    device: str | torch.device = "cpu",
    targets: Sequence[str] = ("logits",),
    checksums: bool = True,
) -> TeacherTargets:
    """The cache's `targets` (logits, embedding, patches, attention) for one split, ready to join on `device`.

    `data` is the dataset directory (or its loaded manifest). A same-view cache gives one row per sample of
    `split` (joined by index); a clean-view cache one row per source photograph of the dataset's sources.beton
    (joined by source id). Refuses, one sentence each, targets the cache lacks, a view it cannot join, a cache
    for another dataset, class count or split, and missing rows. `checksums=True` hashes every shard file
    against the manifest (about 1 s per GB); False checks sizes only. Values are always checked finite.
    """
    import torch

    cache_dir = Path(cache_dir)
    manifest = read_cache_manifest(cache_dir)
    view = cache_view(manifest["provenance"])
    _check_targets(cache_dir, manifest["provenance"], targets)
    data_manifest, data_name = _data_manifest(data)
    if view == "same":
        info = _reader_split(manifest, data_manifest, split, cache_dir, data_name)
        tables, _ = _read_tables(cache_dir, manifest, split, info, targets, checksums)
        return TeacherTargets("same", {k: torch.from_numpy(v).to(device) for k, v in tables.items()})
    if view != "clean":
        raise CdeitError(
            f"cache {cache_dir} has view {view!r}, which this cdeit cannot join to samples; "
            "recompute it with `cdeit precompute-teacher --view same` or `--view clean`."
        )
    info = _reader_sources(manifest, data_manifest, split, cache_dir, data_name)
    tables, ids = _read_tables(cache_dir, manifest, SOURCES_SPLIT, info, targets, checksums, ("source",))
    lookup = _row_of_source(cache_dir, ids["source"])
    split_source = _split_sources(data, split)
    if split_source is not None:
        _check_sources_covered(cache_dir, lookup, split_source, split, data_name)
    return TeacherTargets(
        "clean",
        {k: torch.from_numpy(v).to(device) for k, v in tables.items()},
        row_of_source=torch.from_numpy(lookup).to(device),
        split_source=None if split_source is None else torch.from_numpy(split_source).to(device),
    )


def load_teacher_logits(
    cache_dir: str | os.PathLike,
    data: str | os.PathLike | Mapping[str, Any],
    split: str = "train",
    device: str | torch.device = "cpu",
    checksums: bool = True,
) -> torch.Tensor:
    """The cached teacher logits of one split as a float32 `(N, classes)` tensor on `device`, row i = sample i.

    `load_teacher_targets` for the logits, joined to the split's samples (a clean-view cache needs the dataset
    directory, not only its manifest, for that); it refuses what that refuses.
    """
    table = load_teacher_targets(cache_dir, data, split, device, ("logits",), checksums)
    if table.view == "clean" and table.split_source is None:
        raise CdeitError(
            f"cache {cache_dir} is keyed by source id; pass the dataset directory (not its manifest) to join it."
        )
    return table.per_sample("logits")


# --------------------------------------------------------------------------------------------- checks


def _check_targets(cache_dir: Path, provenance: Mapping[str, Any], targets: Sequence[str]) -> None:
    """Refuse a target name cdeit does not know, or one the cache does not hold."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise CdeitError(f"teacher target {unknown[0]!r} is unknown; choose from {', '.join(TARGETS)}.")
    held = cache_targets(provenance)
    missing = [t for t in targets if t not in held]
    if missing:
        want = ",".join(t for t in TARGETS if t in {*held, *targets})
        raise CdeitError(
            f"cache {cache_dir} holds no {' or '.join(missing)} targets (it holds {', '.join(held)}); "
            f"recompute it with `cdeit precompute-teacher --view {cache_view(provenance)} --targets {want}`."
        )


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


def _row_of_source(cache_dir: Path, source: np.ndarray) -> np.ndarray:
    """(max id + 1,) int64: the row of each source id in a clean-view cache, -1 where it has none."""
    if len(np.unique(source)) != len(source) or (len(source) and source.min() < 0):
        raise CdeitError(f"cache {cache_dir} repeats source ids or holds negative ones; run `cdeit cache verify`.")
    lookup = np.full(int(source.max()) + 1 if len(source) else 0, -1, np.int64)
    lookup[source] = np.arange(len(source))
    return lookup


def _check_sources_covered(
    cache_dir: Path, lookup: np.ndarray, split_source: np.ndarray, split: str, data_name: str
) -> None:
    """Refuse a clean-view cache without a row for the source photograph of every sample of the split."""
    outside = split_source >= len(lookup)
    absent = int(outside.sum() + (lookup[split_source[~outside]] < 0).sum())
    if absent:
        raise CdeitError(
            f"cache {cache_dir} has no row for {absent:,} {split} samples' source photographs; recompute it "
            f"with `cdeit precompute-teacher --view clean` for {data_name}."
        )


# --------------------------------------------------------------------------------------------- the tables


def _read_tables(
    cache_dir: Path,
    manifest: Mapping[str, Any],
    split: str,
    info: Mapping[str, Any],
    targets: Sequence[str],
    checksums: bool,
    keys: Sequence[str] = (),
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every row of `split` for each target (row = `index`), plus the integer `keys` per row; checks coverage.

    `info` is the split's manifest entry, already matched to the dataset: each shard's own attributes must name
    the same split and data fingerprint, and the manifest's teacher, so an edited manifest cannot pass shards off.
    """
    count = info["count"]
    tables: dict[str, np.ndarray] = {}
    ints = {k: np.zeros(count, np.int64) for k in keys}
    filled = np.zeros(count, np.int64)
    for entry in (e for e in manifest["shards"] if e["split"] == split):
        index, arrays = _read_shard(cache_dir, entry, targets, keys, checksums)
        _check_rows(cache_dir / entry["file"], index, arrays, count)
        _check_shard_attrs(cache_dir / entry["file"], split, info["fingerprint"], manifest["provenance"])
        for target in targets:
            values = arrays[TARGET_DATASETS[target]]
            if target not in tables:
                dtype = np.float32 if target == "logits" else np.float16
                tables[target] = np.zeros((count, *values.shape[1:]), dtype)
            tables[target][index] = values
        for k in keys:
            ints[k][index] = arrays[k]
        np.add.at(filled, index, 1)
    if (missing := int((filled == 0).sum())) or (filled > 1).any():
        raise CdeitError(
            f"cache {cache_dir} lacks {' and '.join(targets) or 'rows'} for {missing:,} of {count:,} {split} indices "
            "(or repeats some); finish it with `cdeit precompute-teacher` (or merge the missing slices) and run "
            "`cdeit cache verify`."
        )
    return tables, ints


def _check_rows(path: Path, index: np.ndarray, arrays: Mapping[str, np.ndarray], count: int) -> None:
    """Refuse a shard whose `index` is not a vector of rows 0..count-1 with one row of every dataset per entry."""
    ok = index.ndim == 1 and np.issubdtype(index.dtype, np.integer) and (not index.size or index.min() >= 0)
    ok = ok and (not index.size or index.max() < count) and all(v.shape[:1] == index.shape for v in arrays.values())
    if not ok:
        raise CdeitError(
            f"shard {path} has an `index` outside rows 0..{count - 1} or datasets of other lengths; "
            f"run `cdeit cache verify {path.parent}`."
        )


def _check_shard_attrs(path: Path, split: str, fingerprint: str, provenance: Mapping[str, Any]) -> None:
    """Refuse a shard whose own attributes name another split, other data or another teacher than the manifest."""
    attrs = read_attrs(path)
    hint = f"its manifest was edited or the shard comes from another cache; run `cdeit cache verify {path.parent}`"
    if attrs.get("split") != split:
        raise CdeitError(f"shard {path} holds split {attrs.get('split')!r}, not {split!r}; {hint}.")
    if attrs.get("data_fingerprint") != fingerprint:
        raise CdeitError(
            f"shard {path} was computed for other data (fingerprint {str(attrs.get('data_fingerprint'))[:19]}... "
            f"vs {fingerprint[:19]}...); {hint}."
        )
    if conflicts := provenance_conflicts(provenance, attrs):
        raise CdeitError(
            f"shard {path} disagrees with the manifest on {', '.join(k for k, _, _ in conflicts)}; {hint}."
        )


def _read_shard(
    cache_dir: Path, entry: Mapping[str, Any], targets: Sequence[str], keys: Sequence[str], checksums: bool
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One listed shard's `index`, integer `keys` and target datasets, after its size (and checksum) and values."""
    path = cache_dir / entry["file"]
    hint = f"run `cdeit cache verify {cache_dir}`"
    if not path.is_file():
        raise CdeitError(f"shard {path} listed in the cache manifest is missing; {hint}.")
    if path.stat().st_size != entry["bytes"] or (checksums and sha256_file(path) != entry["sha256"]):
        raise CdeitError(f"shard {path} does not match its checksum in the manifest; {hint}.")
    names = [TARGET_DATASETS[t] for t in targets]
    try:
        arrays = read_arrays(path, ("index", *keys, *names))
    except KeyError:
        raise CdeitError(f"shard {path} lacks some of {', '.join(names)}; {hint}.") from None
    for name in names:
        if not np.isfinite(arrays[name]).all():
            raise CdeitError(f"shard {path} holds NaN or infinite {name}; {hint}.")
    return arrays["index"], arrays
