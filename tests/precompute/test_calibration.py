"""Temperature scaling of the teacher's logits (Guo et al. 2017) and the figures a precompute records about itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cdeit.common.cache import cache_info, read_cache_manifest, write_manifest
from cdeit.common.calibration import at_search_bound, calibrate, expected_calibration_error, fit_temperature, nll
from cdeit.common.errors import CdeitError


def synthetic(temperature: float, n: int = 20000, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z whose labels are drawn from softmax(z / temperature): the true temperature is `temperature`."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 4.0, (n, classes))
    p = np.exp(logits / temperature - (logits / temperature).max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return logits, labels


@pytest.mark.parametrize("true_t", [2.5, 0.6])
def test_the_fit_recovers_a_known_temperature(true_t: float) -> None:
    logits, labels = synthetic(true_t)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.02)


def test_the_fit_is_the_minimum_of_the_nll_and_lowers_the_ece() -> None:
    logits, labels = synthetic(2.5)
    t = fit_temperature(logits, labels)
    for other in (t * 0.97, t * 1.03):
        assert nll(logits, labels, t) < nll(logits, labels, other)
    result = calibrate(logits, labels)
    assert result["temperature"] == t and result["count"] == len(labels)
    assert result["ece_after"] < result["ece_before"] / 3
    assert result["ece_after"] == pytest.approx(expected_calibration_error(logits, labels, t))


def test_a_fit_at_the_end_of_the_search_is_no_temperature() -> None:
    """Val logits that are always right keep lowering the NLL as T falls: the fit ends at the search bound, which is
    said and not recorded (precompute/records.py); a real fit is not at a bound."""
    logits, _ = synthetic(1.0, n=500)
    labels = logits.argmax(1)  # every prediction right
    assert at_search_bound(fit_temperature(logits, labels))
    assert not at_search_bound(fit_temperature(*synthetic(2.5)))


def test_no_logits_are_refused() -> None:
    with pytest.raises(CdeitError):
        fit_temperature(np.zeros((0, 10)), np.zeros(0, dtype=np.int64))


@pytest.fixture(scope="module")
def noisy_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """(cache, summary) of a precompute whose teacher errs on val: a third of the val labels are another class, so
    its confident logits are overconfident there and the fit ends inside the search interval."""
    from cdeit.data.writer import write_dataset
    from cdeit.precompute.run import precompute_teacher
    from tests.conftest import tiny_split
    from tests.precompute.helpers import config

    root = tmp_path_factory.mktemp("noisy")
    splits = {name: tiny_split(n, k, source_offset=k * 10_000) for k, (name, n) in enumerate(
        (("train", 220), ("val", 110), ("test", 110)))}  # fmt: skip
    rng = np.random.default_rng(0)
    val = splits["val"]["label"]
    splits["val"]["label"] = np.where(rng.random(len(val)) < 1 / 3, (val + rng.integers(1, 10, len(val))) % 10, val)
    write_dataset(root / "data", splits, {"split_policy": "grouped", "seed": 0, "corruption_source": "test"})
    return root / "cache", precompute_teacher(config(root / "data", root / "cache"))


def test_a_separable_val_split_records_no_temperature(reference: tuple[Path, dict[str, Any]]) -> None:
    assert read_cache_manifest(reference[0])["calibration"] is None  # every val image right: the fit is at a bound


def test_a_precompute_records_its_temperature_and_throughput(noisy_reference: tuple[Path, dict[str, Any]]) -> None:
    from cdeit.precompute.cli import info_lines

    cache, summary = noisy_reference
    manifest = read_cache_manifest(cache)
    c = manifest["calibration"]
    assert c["split"] == "val" and c["count"] == summary["manifest"]["splits"]["val"]["count"]
    assert c["head_hash"] == manifest["head"]["hash"] and not at_search_bound(c["temperature"])
    assert c["nll_after"] <= c["nll_before"]
    features = manifest["throughput"]["features"]
    assert features["images"] == summary["images"] and features["device"] == "cpu"
    assert features["images_per_s"] == pytest.approx(features["images"] / features["seconds"])
    assert manifest["throughput"]["logits"]["images"] == summary["images"]
    lines = "\n".join(info_lines(cache_info(cache)))
    assert f"{c['temperature']:.4g}" in lines and f"{features['images_per_s']:,.1f}" in lines


def test_a_rebuilt_manifest_keeps_the_records_of_its_head(
    noisy_reference: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(noisy_reference[0], cache)
    before = read_cache_manifest(cache)
    after = write_manifest(cache)  # as a resume or a verify rebuilds it from the shards
    assert after["calibration"] == before["calibration"] and after["throughput"] == before["throughput"]
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["head"]["hash"] = "another head"  # a calibration of another head than the cache's is not carried
    manifest["calibration"]["head_hash"] = "another head"
    (cache / "manifest.json").write_text(json.dumps(manifest))
    assert write_manifest(cache)["calibration"] is None


@pytest.mark.parametrize(
    ("key", "value"),
    [("temperature", -1.0), ("temperature", "2"), ("ece_after", None)],
)
def test_a_bad_calibration_record_names_the_file_and_key(
    noisy_reference: tuple[Path, dict[str, Any]], tmp_path: Path, key: str, value: Any
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(noisy_reference[0], cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["calibration"][key] = value
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CdeitError, match=f"calibration.{key}") as err:
        read_cache_manifest(cache)
    assert "manifest.json" in str(err.value)
