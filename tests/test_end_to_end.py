"""The whole pipeline through the command line on a tiny dataset with a tiny teacher: `cdeit demo`.

What only a whole run shows: the demo's stages hand their files to each other (dataset, cache, three runs,
evaluations, the comparison) and a rerun reuses every finished stage. The smallest sizes the demo accepts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.common.dataset import fingerprint, read_split

PNG = b"\x89PNG\r\n\x1a\n"
TINY = '{"depth": 1, "embed_dim": 32, "num_heads": 2}'
ARGS = ["--teacher", "test_vit", "--per-class-per-type", "1,1,1", "--epochs", "1", "--model-kwargs", TINY,
        "--device", "cpu"]  # fmt: skip  # the smallest dataset the grouped split makes: 110 images per split


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    import cdeit.common.demo as demo_module

    demo_module.hub_reachable = lambda timeout=3.0: False  # no network in CI: the announced random teacher
    out = tmp_path_factory.mktemp("e2e") / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *ARGS])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.slow
def test_dataset_manifest_and_fingerprints(demo: tuple[Path, str]) -> None:
    out, _ = demo
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["corruption_source"] == "generate" and manifest["split_policy"] == "grouped"
    for split, n in (("train", 1), ("val", 1), ("test", 1)):
        arrays = read_split(out / "data" / f"{split}.beton", fields=("image", "label"))
        assert manifest["splits"][split]["count"] == n * 10 * 11
        assert manifest["splits"][split]["fingerprint"] == fingerprint(arrays["image"], arrays["label"])


@pytest.mark.slow
def test_cache_verifies_and_names_its_random_teacher(demo: tuple[Path, str]) -> None:
    out, output = demo
    assert "RANDOM weights" in output
    verify = CliRunner().invoke(app, ["cache", "verify", str(out / "cache"), "--data", str(out / "data")])
    assert verify.exit_code == 0, verify.output
    info = json.loads((out / "cache" / "manifest.json").read_text())
    assert info["provenance"]["random_weights"] is True and info["provenance"]["teacher"] == "test_vit"


@pytest.mark.slow
def test_runs_checkpoints_reports_and_plots(demo: tuple[Path, str]) -> None:
    out, output = demo
    for name in ("vit", "deit-hard", "cdeit-hard"):
        run = out / "runs" / name
        for f in ("config.json", "metrics.jsonl", "checkpoints/last.pt", "model.safetensors", "summary.json"):
            assert (run / f).is_file(), (name, f)
        numbers = json.loads((run / "eval" / "test.json").read_text())
        for key in ("accuracy", "loss", "ece", "clean", "per_corruption", "per_severity", "per_class", "mce",
                    "teacher", "reliability"):  # fmt: skip
            assert key in numbers, (name, key)
        assert len(numbers["per_corruption"]) == 11 and set(numbers["mce"]["corruption_errors"]) == set(
            list(numbers["per_corruption"])[1:]
        )
        report = (run / "eval" / "report.md").read_text()
        assert "ECE-15" in report and "mCE" in report and "teacher accuracy" in report
        assert (run / "eval" / "test-reliability.png").read_bytes()[:8] == PNG
    assert json.loads((out / "runs" / "vit" / "eval" / "test.json").read_text())["mce"]["mce"] == pytest.approx(1.0)
    table = (out / "compare.md").read_text()
    rows = table.split("\n\n")[1].splitlines()  # the group table: header, rule, one row per student
    assert len(rows) == 5 and "CdeiT (cdeit-hard)" in rows[4] and "reused by 2 runs" in table
    assert (out / "compare.png").read_bytes()[:8] == PNG
    assert "comparison:" in output


@pytest.mark.slow
def test_rerun_reuses_finished_stages(demo: tuple[Path, str]) -> None:
    out, _ = demo
    model = out / "runs" / "deit-hard" / "model.safetensors"
    before = model.stat().st_mtime_ns, (out / "data" / "train.beton").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *ARGS])
    assert result.exit_code == 0, result.output
    assert result.output.count("reusing") == 4  # the cache and the three runs
    assert (model.stat().st_mtime_ns, (out / "data" / "train.beton").stat().st_mtime_ns) == before
    assert np.isfinite(json.loads((out / "runs" / "deit-hard" / "summary.json").read_text())["best_val_acc"])
