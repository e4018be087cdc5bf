"""The K augmented views of a `--views K` cache: read onto the device, re-rendered and checked against their hashes.

`load_augmented_views` is the one reader of CACHE/augmented/ (the trainer replays its views, `cache verify --data`
re-renders them); `AugmentedViews.mismatches` re-renders chosen views with common.views and counts those whose
image checksum differs from the stored one (a changed renderer, other data, or a tampered row).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cdeit.common.cache.format import AUGMENTED_DATASETS, views_of
from cdeit.common.cache.store import read_arrays, read_cache_manifest, sha256_file
from cdeit.common.errors import CdeitError
from cdeit.common.views import RENDER_VERSION, Augmentation, ViewParams, image_hash, params_rows, render_views

if TYPE_CHECKING:
    import torch


@dataclass
class AugmentedViews:
    """Every view of the train split on one device: tables (N, K, ...) indexed by (sample, view).

    `logits` (N, K, classes) float32: the teacher's raw logits on each rendered view. `params` (N, K, ...): how to
    render it (common.views.ViewParams). `hashes` (N, K) int64: the checksum of each rendered 32px image.
    """

    views: int
    seed: int
    augmentation: Augmentation
    logits: torch.Tensor
    params: ViewParams
    hashes: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.logits.shape[0])

    def rows(self, index: torch.Tensor, view: torch.Tensor) -> ViewParams:
        """The parameters of view `view` (B,) of samples `index` (B,)."""
        return params_rows(self.params, index, view)

    def render(self, images: torch.Tensor, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) uint8: exactly the images the teacher saw for these (sample, view) pairs."""
        return render_views(images, index, view, self.rows(index, view), self.seed)

    def mismatches(self, images: torch.Tensor, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the pairs whose re-rendered image has another checksum than the stored one."""
        return image_hash(self.render(images, index, view)) != self.hashes[index, view]


def load_augmented_views(
    cache_dir: str | os.PathLike,
    data: str | os.PathLike | Mapping[str, Any],
    device: str | torch.device = "cpu",
    checksums: bool = True,
) -> AugmentedViews:
    """The views of a K-view cache for the train split of `data`, on `device`; one sentence for each refusal."""
    import torch

    from cdeit.common.cache.reader import _data_manifest, _reader_split

    cache_dir = Path(cache_dir)
    manifest = read_cache_manifest(cache_dir)
    provenance, summary = manifest["provenance"], manifest.get("augmented") or {}
    if not views_of(provenance):
        raise CdeitError(
            f"cache {cache_dir} holds no augmented views; make one with `cdeit precompute-teacher --views K`."
        )
    if provenance.get("aug_render_version") != RENDER_VERSION:
        raise CdeitError(
            f"cache {cache_dir} renders its views with version {provenance.get('aug_render_version')}, this cdeit "
            f"with {RENDER_VERSION}; recompute it with `cdeit precompute-teacher --views K`."
        )
    if not summary.get("complete"):
        raise CdeitError(
            f"cache {cache_dir} has augmented views for {summary.get('shards', 0)} of {summary.get('num_shards')} "
            "train shards; finish it with `cdeit precompute-teacher --views K` (or merge the missing slices)."
        )
    data_manifest, data_name = _data_manifest(data)
    count = _reader_split(manifest, data_manifest, "train", cache_dir, data_name)["count"]
    tables = _read_views(cache_dir, manifest, count, checksums)
    on = {k: torch.from_numpy(v).to(device) for k, v in tables.items()}
    return AugmentedViews(
        views=views_of(provenance),
        seed=int(provenance["view_seed"]),
        augmentation=Augmentation.from_attrs(provenance),
        logits=on.pop("view_logits"),
        hashes=on.pop("view_hash"),
        params=ViewParams.from_arrays(on),
    )


def _read_views(cache_dir: Path, manifest: Mapping[str, Any], count: int, checksums: bool) -> dict[str, np.ndarray]:
    """Every augmented dataset as one (count, K, ...) table in index order, after sizes, checksums and coverage."""
    tables: dict[str, np.ndarray] = {}
    filled = np.zeros(count, np.int64)
    hint = f"run `cdeit cache verify {cache_dir}`"
    for entry in manifest["augmented_shards"]:
        path = cache_dir / entry["file"]
        if not path.is_file():
            raise CdeitError(f"shard {path} listed in the cache manifest is missing; {hint}.")
        if path.stat().st_size != entry["bytes"] or (checksums and sha256_file(path) != entry["sha256"]):
            raise CdeitError(f"shard {path} does not match its checksum in the manifest; {hint}.")
        try:
            arrays = read_arrays(path, AUGMENTED_DATASETS)
        except KeyError:
            raise CdeitError(f"shard {path} lacks some of {', '.join(AUGMENTED_DATASETS)}; {hint}.") from None
        if not np.isfinite(arrays["view_logits"]).all():
            raise CdeitError(f"shard {path} holds NaN or infinite view_logits; {hint}.")
        index = arrays.pop("index")
        for name, values in arrays.items():
            table = tables.setdefault(name, np.zeros((count, *values.shape[1:]), values.dtype))
            table[index] = values
        np.add.at(filled, index, 1)
    if (filled != 1).any():
        raise CdeitError(
            f"cache {cache_dir} has augmented views for {int((filled > 0).sum()):,} of {count:,} train samples "
            f"(or repeats some); {hint}."
        )
    return tables


def check_renders(
    views: AugmentedViews, images: torch.Tensor, index: torch.Tensor, view: torch.Tensor, batch: int = 4096
) -> list[tuple[int, int]]:
    """The (sample, view) pairs among `index`, `view` whose re-rendered image differs from the stored checksum."""
    bad: list[tuple[int, int]] = []
    for lo in range(0, len(index), batch):
        i, k = index[lo : lo + batch], view[lo : lo + batch]
        wrong = views.mismatches(images, i, k)
        bad += list(zip(i[wrong].tolist(), k[wrong].tolist(), strict=True))
    return bad
