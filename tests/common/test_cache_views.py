"""The reader of clean-view and feature caches: joins by source, keeps same-view joins by index, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cdeit.common.cache import (
    load_teacher_logits,
    load_teacher_targets,
    merge_caches,
    read_arrays,
    read_cache_manifest,
    verify_cache,
)
from cdeit.common.dataset import read_split
from cdeit.common.errors import CdeitError
from tests.conftest import ALL_TARGETS, make_sourced_dataset


def _rows_by_source(cache: Path) -> dict[int, dict[str, np.ndarray]]:
    """Every row of a clean-view cache, by source id, read straight from the shards."""
    rows: dict[int, dict[str, np.ndarray]] = {}
    for entry in read_cache_manifest(cache)["shards"]:
        a = read_arrays(cache / entry["file"])
        for i, s in enumerate(a["source"]):
            rows[int(s)] = {k: a[k][i] for k in ("logits", "features", "patches", "attention")}
    return rows


def test_clean_view_joins_by_source(clean_cache: Path, sourced_dataset: Path) -> None:
    table = load_teacher_targets(clean_cache, sourced_dataset, "train", targets=ALL_TARGETS)
    assert table.view == "clean" and table.key == "source"
    assert {k: tuple(v.shape) for k, v in table.tensors.items()} == {
        "logits": (80, 10), "embedding": (80, 64), "patches": (80, 64, 64), "attention": (80, 64)}  # fmt: skip
    split = read_split(sourced_dataset / "train.beton", fields=("index", "source"))
    pick = np.array([5, 0, 77, 31, 119])
    index, source = torch.from_numpy(split["index"][pick]), torch.from_numpy(split["source"][pick])
    got = table.gather(index, source)
    rows = _rows_by_source(clean_cache)
    for name, dataset in (("logits", "logits"), ("embedding", "features"), ("patches", "patches")):
        want = np.stack([rows[int(s)][dataset] for s in source])
        assert np.array_equal(got[name].numpy(), want), name
    assert not torch.equal(table.rows(index, source), index)  # not a join by position or index
    with pytest.raises(CdeitError, match="joined by source id"):
        table.gather(index)
    logits = load_teacher_logits(clean_cache, sourced_dataset, "train")  # per sample, for `cdeit evaluate`
    assert logits.shape == (120, 10)
    assert np.array_equal(logits.numpy(), np.stack([rows[int(s)]["logits"] for s in split["source"]]))


def test_same_view_keeps_its_join_by_index(same_feature_cache: Path, sourced_dataset: Path) -> None:
    table = load_teacher_targets(same_feature_cache, sourced_dataset, "val", targets=ALL_TARGETS)
    assert table.view == "same" and table.row_of_source is None
    logits = load_teacher_logits(same_feature_cache, sourced_dataset, "val")
    assert torch.equal(table.tensors["logits"], logits) and logits.shape == (60, 10)
    index = torch.tensor([7, 3, 59])
    assert torch.equal(table.gather(index)["patches"], table.tensors["patches"][index])


def test_a_cache_it_cannot_join_is_refused(
    clean_cache: Path, same_feature_cache: Path, sourced_dataset: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    other = make_sourced_dataset(tmp_path / "other", seed=3)  # same layout, other source images
    with pytest.raises(CdeitError, match="other source images than .*sources.beton; recompute it with"):
        load_teacher_targets(clean_cache, other, "train")
    with pytest.raises(CdeitError, match="has no sources.beton .* rebuild the dataset with the current"):
        load_teacher_targets(clean_cache, tiny_dataset, "train")  # a dataset from before sources.beton
    with pytest.raises(CdeitError, match="fingerprint"):  # a same-view cache joins this dataset's samples only
        load_teacher_targets(same_feature_cache, other, "train")
    odd = Path(shutil.copytree(clean_cache, tmp_path / "odd"))
    manifest = json.loads((odd / "manifest.json").read_text())
    manifest["provenance"]["view"] = "blurred"
    (odd / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CdeitError, match="has view 'blurred', which this cdeit cannot join"):
        load_teacher_targets(odd, sourced_dataset, "train")


def test_missing_targets_name_the_option(tiny_dataset: Path, tmp_path: Path) -> None:
    from tests.common.test_cache import make_cache

    make_cache(tmp_path / "logits", tiny_dataset)  # logits only, as every cache before feature targets
    with pytest.raises(CdeitError, match=r"holds no patches targets .*--view same --targets logits,patches"):
        load_teacher_targets(tmp_path / "logits", tiny_dataset, "train", targets=("logits", "patches"))
    assert load_teacher_targets(tmp_path / "logits", tiny_dataset, "val").tensors["logits"].shape == (110, 10)


def test_verify_and_merge_know_the_view(clean_cache: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    assert any("no sources.beton" in p for p in verify_cache(clean_cache, tiny_dataset))
    relabelled = Path(shutil.copytree(clean_cache, tmp_path / "relabelled"))
    manifest = json.loads((relabelled / "manifest.json").read_text())
    manifest["provenance"]["view"] = "same"  # same shards, head and data: only the view differs
    (relabelled / "manifest.json").write_text(json.dumps(manifest))
    assert any("disagrees with the manifest on view" in p for p in verify_cache(relabelled))
    with pytest.raises(CdeitError, match=r"differ in view \(clean vs same\)"):
        merge_caches([clean_cache, relabelled], tmp_path / "merged")
