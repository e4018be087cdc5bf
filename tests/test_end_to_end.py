"""The whole pipeline through the command line at the smallest size, with a tiny teacher: `cdeit demo`."""

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
ARGS = ["--teacher", "test_resnet", "--teacher-epochs", "1", "--per-class-per-type", "2,1,2", "--epochs", "1",
        "--seeds", "2", "--model-kwargs", TINY, "--device", "cpu"]  # fmt: skip
RUNS = [f"{name}-s{seed}" for seed in (0, 1) for name in ("vit", "deit-hard", "cdeit-hard")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("e2e") / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *ARGS])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.slow
def test_dataset_manifest_and_fingerprints(demo: tuple[Path, str]) -> None:
    out, _ = demo
    manifest = json.loads((out / "data" / "manifest.json").read_text())
    assert manifest["corruption_source"] == "generate" and manifest["split_policy"] == "grouped"
    for split, n in (("train", 2), ("val", 1), ("test", 2)):
        arrays = read_split(out / "data" / f"{split}.beton", fields=("image", "label"))
        assert manifest["splits"][split]["count"] == n * 10 * 11
        assert manifest["splits"][split]["fingerprint"] == fingerprint(arrays["image"], arrays["label"])


@pytest.mark.slow
def test_teacher_learns_from_photographs_the_students_never_see(demo: tuple[Path, str]) -> None:
    """The teacher's clean set is 10x the students' photographs and holds none of their val or test photographs;
    its cache verifies and names the trained run, not random weights."""
    out, _ = demo
    teacher = [read_split(out / "data-teacher" / f"{s}.beton", fields=("image",))["image"] for s in ("train", "val")]
    assert sum(map(len, teacher)) >= 10 * 10 * (2 + 1 + 2)  # 10x the students' photographs (10 classes)
    theirs = {image.tobytes() for images in teacher for image in images}
    for split in ("val", "test"):
        arrays = read_split(out / "data" / f"{split}.beton", fields=("image", "corruption"))
        assert not theirs & {image.tobytes() for image in arrays["image"][arrays["corruption"] == 0]}, split
    verify = CliRunner().invoke(app, ["cache", "verify", str(out / "cache"), "--data", str(out / "data")])
    assert verify.exit_code == 0, verify.output
    provenance = json.loads((out / "cache" / "manifest.json").read_text())["provenance"]
    assert provenance["random_weights"] is False and "test_resnet" in json.dumps(provenance)
    assert (out / "runs" / "teacher" / "model.safetensors").is_file()


@pytest.mark.slow
def test_runs_checkpoints_reports_and_plots(demo: tuple[Path, str]) -> None:
    out, output = demo
    for name in RUNS:
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
    for seed in (0, 1):
        vit = json.loads((out / "runs" / f"vit-s{seed}" / "eval" / "test.json").read_text())
        assert vit["mce"]["mce"] == pytest.approx(1.0)
    table = (out / "compare.md").read_text()
    rows = table.split("\n\n")[1].splitlines()  # the group table: header, rule, one row per student
    assert len(rows) == 5 and "CdeiT" in rows[4] and "reused by 4 runs" in table
    assert "Teacher: " in table and "Paired differences" in table
    assert (out / "compare.png").read_bytes()[:8] == PNG
    assert "comparison:" in output


@pytest.mark.slow
def test_rerun_reuses_finished_stages(demo: tuple[Path, str]) -> None:
    out, _ = demo
    model = out / "runs" / "deit-hard-s1" / "model.safetensors"
    before = model.stat().st_mtime_ns, (out / "data" / "train.beton").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *ARGS])
    assert result.exit_code == 0, result.output
    assert result.output.count("reusing") == 8  # the teacher run, the cache and the six student runs
    assert (model.stat().st_mtime_ns, (out / "data" / "train.beton").stat().st_mtime_ns) == before
    assert np.isfinite(json.loads((out / "runs" / "deit-hard-s1" / "summary.json").read_text())["best_val_acc"])
