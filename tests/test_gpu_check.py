"""bench/gpu/run.py, the prepared GPU check: its CPU dry run end to end, its time limits and its decisions.

The dry run is the same script the device runs (its smallest preset `dry`, `--device cpu`, no carry folder), so
the check cannot rot while no GPU is lent; the other tests cover what a lent machine would otherwise find out late.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

GPU = Path(__file__).resolve().parents[1] / "bench" / "gpu"
SCRIPT = GPU / "run.py"


@pytest.fixture(scope="module")
def check_module():  # noqa: ANN201
    sys.path.insert(0, str(GPU))  # run.py imports selfcheck.py from beside it, as when it runs as a script
    try:
        yield importlib.import_module("run")
    finally:
        sys.path.remove(str(GPU))
        for name in ("run", "selfcheck"):  # generic names: leave no trace for other tests
            sys.modules.pop(name, None)


def run_check(tmp_path: Path, *args: str, timeout: float = 280) -> tuple[int, dict, str]:
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--workdir", str(tmp_path / "work"), "--preset", "dry",
           "--device", "cpu", *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    doc = json.loads((out / "gpu-check.json").read_text()) if (out / "gpu-check.json").is_file() else {}
    return proc.returncode, doc, proc.stdout + proc.stderr


@pytest.mark.slow
def test_dry_run_measures_every_stage_and_writes_json_markdown_and_log(tmp_path: Path) -> None:
    code, doc, output = run_check(tmp_path, "--recipe-epochs", "1")
    assert code == 0, output
    stages = doc["stages"]
    assert list(stages) == ["selfcheck", "data", "precompute", "train", "recipe"]
    assert all(s["status"] == "ok" for s in stages.values()), stages
    sc = stages["selfcheck"]["result"]
    assert (
        sc["device"] == "cpu"
        and sc["beton_images"] == 64
        and {"data", "precompute", "train"} <= set(sc["cdeit_commands"])
    )
    assert stages["data"]["result"]["images"] == {"train": 20, "val": 20, "test": 20}
    pre = stages["precompute"]["result"]
    assert pre["images"] == 60 and pre["images_per_s"] > 0 and pre["complete"] is True  # the summary line parsed
    train = stages["train"]["result"]
    assert set(train["median"]) == {"a_cached", "b_online", "c_none"} and min(train["median"].values()) > 0
    assert 0 < train["loader_share"] < 1 and train["batch_size"] == 4
    recipe = stages["recipe"]["result"]
    assert recipe["epochs"] == 1 and recipe["fifteen_epochs_basis"].startswith("extrapolated")
    assert doc["recipe_plan"]["why"] == "--recipe-epochs 1"
    assert doc["goals"]["cached_over_online"]["measured"] == pytest.approx(train["a_over_b"])
    md = (tmp_path / "out" / "gpu-check.md").read_text()
    assert "| precompute | ok |" in md and "(b) teacher online" in md and "extrapolated" in md
    log = (tmp_path / "out" / "gpu-check.log").read_text()
    assert all(f"===== {s} =====" in log for s in stages) and "$ cdeit precompute-teacher" in log


def test_a_stage_past_its_limit_is_killed_and_the_results_say_so(tmp_path: Path) -> None:
    code, doc, output = run_check(tmp_path, "--stages", "selfcheck", "--limit", "selfcheck=1", timeout=60)
    assert code == 3, output
    entry = doc["stages"]["selfcheck"]
    assert entry["status"] == "timeout" and entry["error"] == "stopped at its 1 s limit" and entry["seconds"] < 10
    assert "self-check failed: stopped at its 1 s limit -- nothing else ran." in output


def test_a_failing_stage_reports_one_line_and_the_next_stage_still_runs(tmp_path: Path) -> None:
    code, doc, output = run_check(tmp_path, "--stages", "precompute,train", timeout=120)  # no dataset was made
    assert code == 1, output
    for name in ("precompute", "train"):
        assert doc["stages"][name]["status"] == "failed", doc["stages"][name]
    assert "exited with status 2: error:" in (err := doc["stages"]["precompute"]["error"]) and "does not exist" in err
    assert "does not exist" in doc["stages"]["train"]["error"]  # a CdeitError outside the command line: its sentence
    assert "does not exist" in (tmp_path / "out" / "gpu-check.log").read_text()


def test_stages_without_budget_are_skipped_not_started(tmp_path: Path) -> None:
    code, doc, _ = run_check(tmp_path, "--budget", "3", timeout=30)
    assert code == 3
    entry = doc["stages"]["selfcheck"]
    assert entry["status"] == "skipped" and "of the budget left" in entry["error"] and "seconds" not in entry


def check_with(module, budget: float = 450, **results: dict):  # noqa: ANN001, ANN201
    args = argparse.Namespace(budget=budget, recipe_epochs=None)
    spec = {"settings": {"budget_s": budget, "limits": module.PRESETS["full"].limits,
                         "minimum": module.PRESETS["full"].minimum}, "recipe_epochs": None}  # fmt: skip
    check = module.Check(args, spec)
    check.stages = {k: {"status": "ok", "result": v} for k, v in results.items()}
    return check


def test_the_recipe_runs_15_epochs_only_where_the_measured_rate_says_they_fit(check_module) -> None:  # noqa: ANN001
    data = {"images": {"train": 495_000}}
    fast = check_with(check_module, data=data, train={"median": {"a_cached": 80_000}})
    plan = check_module.plan_recipe(fast, limit=300)
    assert plan["epochs"] == 15 and plan["estimate_15_s"] == pytest.approx(15 * 495_000 / 80_000 * 1.15 + 60)
    slow = check_with(check_module, data=data, train={"median": {"a_cached": 20_000}})
    assert check_module.plan_recipe(slow, limit=300)["epochs"] == 1
    unmeasured = check_with(check_module, data=data)
    assert "no training rate measured" in check_module.plan_recipe(unmeasured, limit=300)["why"]
    slow.spec["recipe_epochs"] = 3
    assert check_module.plan_recipe(slow, limit=300)["epochs"] == 3


def test_each_stage_limit_leaves_the_later_stages_their_minimum(check_module) -> None:  # noqa: ANN001
    check = check_with(check_module, budget=450)
    stages = list(check_module.STAGES)
    later = sum(check.spec["settings"]["minimum"][s] for s in stages[2:])
    assert check_module.stage_limit(check, "data", stages) == 150  # its own cap
    check.started -= 450 - later - 100  # 100 s left beyond what the later stages need
    assert check_module.stage_limit(check, "data", stages) == pytest.approx(100, abs=1)


def test_the_full_preset_is_the_papers_dataset(check_module) -> None:  # noqa: ANN001
    full = check_module.PRESETS["full"]
    train, val, test = (int(x) for x in full.per_class_per_type.split(","))
    assert (train * 10 * 11, val * 10 * 11, test * 10 * 11) == (495_000, 22_000, 22_000)
    assert sum(full.synth) >= train + val + test  # enough procedural photographs per class for the grouped split
    assert full.batch_size == 1024 and full.compile and full.teacher == "deit3_small_patch16_224"
    assert full.types is None  # every image type: clean and the ten corruptions
    assert sum(full.minimum.values()) <= full.budget_s
