"""The cache contract on synthetic shards: layout, manifest, verify, merge, info and the trainer's reader."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from cdeit.common.cache import (
    CACHE_FORMAT,
    FEATURES,
    FORMAT_VERSION,
    HEAD_FILE,
    LOGITS,
    MANIFEST,
    ShardSpec,
    load_teacher_logits,
    merge_caches,
    plan_shards,
    provenance,
    provenance_conflicts,
    read_arrays,
    read_attrs,
    read_cache_manifest,
    sha256_file,
    tensor_hash,
    verify_cache,
    write_manifest,
    write_shard,
)
from cdeit.common.cache import shard_attrs as format_shard_attrs
from cdeit.common.cli import app
from cdeit.common.dataset import load_manifest
from cdeit.common.errors import CdeitError

SHARD = 50


def make_cache(
    out: Path, data_dir: Path, splits: tuple[str, ...] = ("train", "val"), only: set[int] | None = None, **over: Any
) -> dict[str, np.ndarray]:
    """A cache of random logits for `data_dir`, written through the real shard writer; returns the tables.

    `only` keeps the shards at these positions of the plan (a slice); `over` overrides shard attributes.
    """
    data = load_manifest(data_dir)
    rng = np.random.default_rng(0)
    head = {"weight": torch.ones(10, 4), "bias": torch.zeros(10)}
    out.mkdir(parents=True, exist_ok=True)
    save_file(head, str(out / HEAD_FILE), metadata={"source": json.dumps("test")})
    tables = {s: rng.normal(size=(data["splits"][s]["count"], 10)).astype(np.float32) for s in splits}
    plan = plan_shards({s: data["splits"][s]["count"] for s in splits}, SHARD)
    for g, spec in enumerate(plan):
        if only is None or g in only:
            arrays = {"index": np.arange(spec.start, spec.stop), "logits": tables[spec.split][spec.start : spec.stop]}
            write_shard(spec.path(out), arrays, shard_attrs(spec, data, tensor_hash(head)) | over)
    write_manifest(out)
    return tables


def shard_attrs(spec: ShardSpec, data: dict[str, Any], head_hash: str) -> dict[str, Any]:
    split = data["splits"][spec.split]
    return {
        "format": CACHE_FORMAT, "format_version": FORMAT_VERSION, "kind": LOGITS, "split": spec.split,
        "shard": spec.shard, "start": spec.start, "stop": spec.stop, "split_count": split["count"],
        "data_fingerprint": split["fingerprint"], "teacher": "synthetic", "weights_hash": "sha256:w",
        "random_weights": True, "input_size": [224, 224], "interpolation": "bicubic", "mean": [0.5] * 3,
        "std": [0.5] * 3, "compute_dtype": "float32", "shard_size": SHARD, "classes": data["classes"],
        "corruptions": data["corruptions"], "head_hash": head_hash, "store_features": False,
        "correct_by_corruption": [1] + [0] * 10, "count_by_corruption": [spec.count] + [0] * 10,
        "weights_source": "test", "device_type": "cpu", "resize": "whole", "tool_version": "0",
    }  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A sound synthetic cache (train and val of the tiny dataset): copy it before changing it."""
    path = tmp_path_factory.mktemp("cache") / "cache"
    return path, make_cache(path, tiny_dataset)


def copy_of(cache: tuple[Path, Any], tmp_path: Path) -> Path:
    return Path(shutil.copytree(cache[0], tmp_path / "copy"))


# --------------------------------------------------------------------------------------------- layout


def test_shard_round_trip_and_identical_bytes(tmp_path: Path) -> None:
    arrays = {"index": np.arange(3), "logits": np.eye(3, dtype=np.float32)}
    attrs = {"split": "val", "mean": [0.5, 0.25], "classes": ["a", "b"], "random_weights": True, "shard": 2}
    write_shard(tmp_path / "a.h5", arrays, attrs)
    write_shard(tmp_path / "b.h5", arrays, attrs)
    assert sha256_file(tmp_path / "a.h5") == sha256_file(tmp_path / "b.h5")
    assert read_attrs(tmp_path / "a.h5") == attrs
    back = read_arrays(tmp_path / "a.h5")
    assert back["logits"].dtype == np.float32 and np.array_equal(back["logits"], arrays["logits"])
    assert not list(tmp_path.glob(".*tmp*"))


def test_plan_shards_covers_every_index_once() -> None:
    plan = plan_shards({"train": 105, "val": 50}, 50)
    assert [(s.split, s.shard, s.start, s.stop) for s in plan] == [
        ("train", 0, 0, 50), ("train", 1, 50, 100), ("train", 2, 100, 105), ("val", 0, 0, 50),
    ]  # fmt: skip
    assert plan[1].name == "train-00001.h5"
    with pytest.raises(CdeitError, match="shard-size"):
        plan_shards({"train": 1}, 0)


def test_tensor_hash_depends_on_values_names_and_dtype_not_order() -> None:
    a = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(2)}
    assert tensor_hash(a) == tensor_hash({"b": torch.zeros(2), "w": torch.arange(6.0).view(2, 3)})
    assert tensor_hash(a) == tensor_hash({k: v.numpy() for k, v in a.items()})
    assert tensor_hash(a) != tensor_hash({"w": a["w"], "b": torch.tensor([0.0, 1e-7])})
    assert tensor_hash(a) != tensor_hash({"w2": a["w"], "b": a["b"]})
    assert tensor_hash(a) != tensor_hash({"w": a["w"].double(), "b": a["b"]})


def test_manifest_is_derived_from_the_shards(cache: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, tables = cache
    m = read_cache_manifest(path)
    assert m["complete"] and list(m["splits"]) == ["train", "val"]
    assert m["splits"]["train"]["num_shards"] == 5 and m["splits"]["train"]["count"] == len(tables["train"])
    assert m["splits"]["val"]["accuracy_by_corruption"] == {"clean": pytest.approx(3 / 110)}
    assert m["dataset"]["num_classes"] == 10 and m["provenance"]["teacher"] == "synthetic"
    assert m["head"]["hash"] == m["provenance"]["head_hash"]
    for entry in m["shards"]:
        assert entry["sha256"] == sha256_file(path / entry["file"])


def test_the_format_writes_the_documented_attributes(tiny_dataset: Path) -> None:
    data = load_manifest(tiny_dataset)
    spec = plan_shards({"train": data["splits"]["train"]["count"]}, SHARD)[1]
    preprocessing = {"input_size": [224, 224], "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3,
                     "resize": "whole"}  # fmt: skip
    run = provenance(teacher="synthetic", weights_hash="sha256:w", random_weights=True, preprocessing=preprocessing,
                     compute_dtype="float32", shard_size=SHARD, classes=data["classes"],
                     corruptions=data["corruptions"], weights_source="test", device_type="cpu")  # fmt: skip
    assert "view" not in run and "token_targets" not in run  # the paper's cache carries no view keys
    tally = ([1] + [0] * 10, [spec.count] + [0] * 10)
    attrs = format_shard_attrs(spec, LOGITS, run, data["splits"]["train"], "sha256:h", False, tally)
    assert attrs | {"tool_version": "0"} == shard_attrs(spec, data, "sha256:h")  # the list docs/cache-format.md gives
    features = format_shard_attrs(spec, FEATURES, run, data["splits"]["train"])
    assert features["kind"] == FEATURES and features["feature_dtype"] == "float16" and "head_hash" not in features
    clean = provenance(**{**_provenance_args(run), "view": "clean"})
    assert clean["view"] == "clean" and clean["token_targets"] == [] and "target_grid" not in clean
    patches = provenance(**_provenance_args(run), token_targets=("patches",), teacher_grid=(14, 14))
    assert patches["target_grid"] == [8, 8] and patches["teacher_grid"] == [14, 14]


def _provenance_args(run: dict[str, Any]) -> dict[str, Any]:
    names = ("input_size", "interpolation", "mean", "std", "resize", "tool_version")
    kept = {k: v for k, v in run.items() if k not in names}
    return kept | {"preprocessing": {k: run[k] for k in names[:5]}}


def test_provenance_conflicts_is_the_one_agreement_check() -> None:
    a = {"teacher": "t", "weights_hash": "w", "head_hash": "h", "store_features": False}
    assert provenance_conflicts(a, dict(a)) == []
    other = a | {"teacher": "u", "head_hash": "g"}
    assert provenance_conflicts(a, other) == [("teacher", "t", "u"), ("head_hash", "h", "g")]
    assert provenance_conflicts(a, {"teacher": "t", "weights_hash": "w"}) == []  # a features-only slice: no head yet
    assert provenance_conflicts(a, a | {"view": "clean"}) == [("view", "same", "clean")]
    assert provenance_conflicts(a, a | {"token_targets": ["patches"]}) == [("targets", [], ["patches"])]
    assert provenance_conflicts(a, a | {"teacher": "u"}, keys=("weights_hash",)) == []


# --------------------------------------------------------------------------------------------- verify


def test_verify_passes_a_sound_cache(cache: tuple[Path, Any], tiny_dataset: Path) -> None:
    assert verify_cache(cache[0], tiny_dataset) == []


def test_verify_catches_a_flipped_byte(cache: tuple[Path, Any], tmp_path: Path) -> None:
    path = copy_of(cache, tmp_path)
    shard = path / "train-00001.h5"
    with h5py.File(shard, "r") as f:
        offset = f["logits"].id.get_offset()  # where the logits' bytes start in the file
    raw = bytearray(shard.read_bytes())
    raw[offset + 41] ^= 0x01  # inside the logits: the file still opens, only the checksum can tell
    shard.write_bytes(bytes(raw))
    assert verify_cache(path) == [
        "shard train-00001.h5 does not match its checksum in the manifest (damaged or changed)."
    ]


def test_verify_catches_a_missing_shard(cache: tuple[Path, Any], tmp_path: Path) -> None:
    path = copy_of(cache, tmp_path)
    (path / "val-00002.h5").unlink()
    problems = verify_cache(path)
    assert "shard val-00002.h5 listed in the manifest is missing." in problems
    assert "split val: 10 of 110 indices have no logits." in problems


def test_verify_catches_a_nan(cache: tuple[Path, Any], tmp_path: Path) -> None:
    path = copy_of(cache, tmp_path)
    with h5py.File(path / "train-00000.h5", "r+") as f:
        f["logits"][3, 4] = np.nan
    problems = verify_cache(path)
    assert "shard train-00000.h5: 1 logits values are NaN or infinite." in problems
    assert any("checksum" in p for p in problems)


def test_verify_catches_a_mismatched_fingerprint(cache: tuple[Path, Any], tiny_dataset: Path, tmp_path: Path) -> None:
    other = Path(shutil.copytree(tiny_dataset, tmp_path / "other"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["splits"]["val"]["fingerprint"] = "sha256:" + "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_cache(cache[0], other)
    assert len(problems) == 1 and "split val" in problems[0] and "sha256:000" in problems[0]


def test_verify_cli_exits_nonzero_with_a_list(cache: tuple[Path, Any], tmp_path: Path) -> None:
    path = copy_of(cache, tmp_path)
    (path / "train-00000.h5").unlink()
    result = CliRunner().invoke(app, ["cache", "verify", str(path)])
    assert result.exit_code == 1
    assert "2 problem(s)" in result.output and "train-00000.h5 listed in the manifest is missing" in result.output
    assert CliRunner().invoke(app, ["cache", "verify", str(cache[0])]).exit_code == 0


def test_info_cli_prints_the_provenance(cache: tuple[Path, Any]) -> None:
    result = CliRunner().invoke(app, ["cache", "info", str(cache[0])])
    assert result.exit_code == 0, result.output
    for text in ("synthetic", "sha256:w", "YES: logits of an untrained teacher", "bicubic", "split train", "MiB"):
        assert text in result.output


# --------------------------------------------------------------------------------------------- merge


def test_two_slices_merge_into_the_full_cache(cache: tuple[Path, Any], tiny_dataset: Path, tmp_path: Path) -> None:
    a = tmp_path / "a"
    b = tmp_path / "b"
    make_cache(a, tiny_dataset, only={0, 2, 4, 6})
    make_cache(b, tiny_dataset, only={1, 3, 5, 7})
    assert not read_cache_manifest(a)["complete"]
    merged = merge_caches([a, b], tmp_path / "merged")
    full = read_cache_manifest(cache[0])
    assert merged["complete"] and merged["shards"] == full["shards"] and merged["splits"] == full["splits"]
    assert verify_cache(tmp_path / "merged") == []


@pytest.mark.parametrize(
    ("override", "message"),
    [({"teacher": "other"}, "cannot mix teachers"), ({"head_hash": "sha256:h"}, "cannot mix heads"),
     ({"data_fingerprint": "sha256:f"}, "different data")],
)  # fmt: skip
def test_merge_refuses_to_mix_runs(tiny_dataset: Path, tmp_path: Path, override: dict, message: str) -> None:
    make_cache(tmp_path / "a", tiny_dataset, only={0})
    make_cache(tmp_path / "b", tiny_dataset, only={1}, **override)
    with pytest.raises(CdeitError, match=message):
        merge_caches([tmp_path / "a", tmp_path / "b"], tmp_path / "merged")


# --------------------------------------------------------------------------------------------- the reader


def test_reader_returns_logits_in_index_order(cache: tuple[Path, dict[str, np.ndarray]], tiny_dataset: Path) -> None:
    path, tables = cache
    for split in ("train", "val"):
        logits = load_teacher_logits(path, tiny_dataset, split, device="cpu")
        assert logits.dtype == torch.float32 and logits.device.type == "cpu"
        assert torch.equal(logits, torch.from_numpy(tables[split]))
    quick = load_teacher_logits(path, load_manifest(tiny_dataset), "val", checksums=False)
    assert torch.equal(quick, torch.from_numpy(tables["val"]))


def test_reader_refuses_another_dataset(cache: tuple[Path, Any], tiny_dataset: Path) -> None:
    data = load_manifest(tiny_dataset)
    data["splits"]["train"]["fingerprint"] = "sha256:" + "1" * 64
    with pytest.raises(CdeitError, match="computed for another dataset than the dataset"):
        load_teacher_logits(cache[0], data, "train")


def test_reader_refuses_another_class_count(cache: tuple[Path, Any], tiny_dataset: Path) -> None:
    data = load_manifest(tiny_dataset)
    data["classes"] = data["classes"][:5]
    with pytest.raises(CdeitError, match="holds 10-class logits but the dataset has 5 classes"):
        load_teacher_logits(cache[0], data, "train")


def test_reader_refuses_missing_indices(cache: tuple[Path, Any], tiny_dataset: Path, tmp_path: Path) -> None:
    path = copy_of(cache, tmp_path)
    (path / "train-00004.h5").unlink()
    write_manifest(path)
    with pytest.raises(CdeitError, match="lacks logits for 20 of 220 train indices"):
        load_teacher_logits(path, tiny_dataset, "train")


def test_reader_refuses_a_different_split(cache: tuple[Path, Any], tiny_dataset: Path) -> None:
    with pytest.raises(CdeitError, match="has no logits for split 'test'"):
        load_teacher_logits(cache[0], tiny_dataset, "test")
    data = load_manifest(tiny_dataset)
    data["splits"]["train"], data["splits"]["val"] = data["splits"]["val"], data["splits"]["train"]
    with pytest.raises(CdeitError, match="the val logits in cache .* were computed for the train split"):
        load_teacher_logits(cache[0], data, "val")


def test_reader_refuses_a_damaged_shard(cache: tuple[Path, Any], tiny_dataset: Path, tmp_path: Path) -> None:
    path = copy_of(cache, tmp_path)
    with h5py.File(path / "val-00000.h5", "r+") as f:
        f["logits"][0, 0] = 123.0
    with pytest.raises(CdeitError, match="val-00000.h5 does not match its checksum"):
        load_teacher_logits(path, tiny_dataset, "val")


def test_reader_refuses_a_directory_that_is_not_a_cache(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(CdeitError, match=f"{MANIFEST} is missing"):
        load_teacher_logits(tmp_path, tiny_dataset)
    (tmp_path / MANIFEST).write_text("[1, 2]")  # valid JSON, but no manifest
    with pytest.raises(CdeitError, match=MANIFEST):  # named, whatever the sentence
        load_teacher_logits(tmp_path, tiny_dataset)


def test_merge_cli_joins_slices(tiny_dataset: Path, tmp_path: Path) -> None:
    make_cache(tmp_path / "a", tiny_dataset, only={0, 1, 2})
    make_cache(tmp_path / "b", tiny_dataset, only={3, 4, 5, 6, 7})
    args = ["cache", "merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "8 logit shards, complete" in result.output
    result = CliRunner().invoke(app, ["cache", "merge", str(tmp_path / "a"), "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "is also one of the caches to merge" in result.output
