"""Temperature scaling of the teacher's logits (Guo et al. 2017) and the figures a precompute records about itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cdeit.common.cache import cache_info, read_cache_manifest, write_manifest
from cdeit.common.calibration import calibrate, expected_calibration_error, fit_temperature, nll
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


def test_no_logits_are_refused() -> None:
    with pytest.raises(CdeitError):
        fit_temperature(np.zeros((0, 10)), np.zeros(0, dtype=np.int64))


def test_a_precompute_records_its_temperature_and_throughput(reference: tuple[Path, dict[str, Any]]) -> None:
    from cdeit.precompute.cli import info_lines

    cache, summary = reference
    manifest = read_cache_manifest(cache)
    c = manifest["calibration"]
    assert c["split"] == "val" and c["count"] == summary["manifest"]["splits"]["val"]["count"]
    assert c["head_hash"] == manifest["head"]["hash"] and c["temperature"] > 0
    assert c["nll_after"] <= c["nll_before"]
    features = manifest["throughput"]["features"]
    assert features["images"] == summary["images"] and features["device"] == "cpu"
    assert features["images_per_s"] == pytest.approx(features["images"] / features["seconds"])
    assert manifest["throughput"]["logits"]["images"] == summary["images"]
    lines = "\n".join(info_lines(cache_info(cache)))
    assert f"{c['temperature']:.4g}" in lines and f"{features['images_per_s']:,.1f}" in lines


def test_a_rebuilt_manifest_keeps_the_records_of_its_head(
    reference: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(reference[0], cache)
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
    reference: tuple[Path, dict[str, Any]], tmp_path: Path, key: str, value: Any
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(reference[0], cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["calibration"][key] = value
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CdeitError, match=f"calibration.{key}") as err:
        read_cache_manifest(cache)
    assert "manifest.json" in str(err.value)
