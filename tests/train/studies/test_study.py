"""`cdeit sweep` and the study-aware `cdeit compare`: planning, refusals, run state and steps, the lock, statistics
(fast, on planned studies and made-up evaluated runs), and one real study end to end (kill, resume, submitit)."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.common.errors import CdeitError
from cdeit.train.studies.presets import PRESETS, preset_spec
from cdeit.train.studies.results import Group, RunResult
from cdeit.train.studies.savings import cache_savings
from cdeit.train.studies.study import (
    CHECKPOINT,
    plan_study,
    planned_runs,
    read_plan,
    read_spec,
    run_status,
    settings_hash,
    spec_text,
    tomllib,
    write_plan,
)
from cdeit.train.studies.sweep import describe, run_step, threads_per_job
from cdeit.train.studies.tables import paired_difference, paper_table

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}
PNG = b"\x89PNG\r\n\x1a\n"


def _spec(data: Path, out: Path, epochs: int = 1, extra: str = "") -> str:
    """Two configurations (the ViT baseline and CdeiT, no teacher) x two seeds of a tiny student."""
    return f"""
[study]
name = "tiny"
out = "{out}"
seeds = [0, 1]
baseline = "vit"
{extra}
[shared]
data = "{data}"
distill = "none"
epochs = {epochs}
batch_size = 32
eval_batch_size = 64
workers = 1
model_kwargs = {{depth = 2, embed_dim = 48, num_heads = 2}}

[axes]
student = ["vit", "cdeit"]
"""


def _plan(text: str, tmp_path: Path):  # noqa: ANN202
    return plan_study(tomllib.loads(text), tmp_path / "study.toml")


# ------------------------------------------------------------------------------------------ planning
def test_plan_crosses_axes_adds_configs_and_names_runs(tiny_dataset: Path, tmp_path: Path) -> None:
    text = _spec(tiny_dataset, tmp_path / "s") + '\n[[configs]]\nname = "deit-wd"\nstudent = "deit"\n' \
        'distill = "none"\nweight_decay = 0\n'  # fmt: skip
    study = _plan(text, tmp_path)
    assert list(study.groups) == ["deit-wd", "vit", "cdeit"]
    assert [r.name.rsplit("-", 1)[0] for r in study.runs] == [
        "deit-wd-s0", "deit-wd-s1", "vit-s0", "vit-s1", "cdeit-s0", "cdeit-s1"]  # fmt: skip
    run = study.runs[0]
    assert run.settings["weight_decay"] == 0 and run.settings["epochs"] == 1 and run.settings["seed"] == 0
    assert run.settings["model_kwargs"] == TINY and run.settings["lr_per_512"] == 5e-4  # Table 1 default
    assert Path(run.settings["out"]) == (tmp_path / "s" / "runs" / run.name).resolve()
    assert run.name.endswith(settings_hash(run.settings)) and len(set(r.name for r in study.runs)) == 6
    # the hash follows what a run learns, not where it writes or how many loader threads it has
    assert settings_hash(run.settings | {"workers": 7, "out": "x"}) == settings_hash(run.settings)
    assert settings_hash(run.settings | {"epochs": 2}) != settings_hash(run.settings)
    added = {k: v for k, v in run.settings.items() if k != "aa"}  # a field cdeit adds later, at its default
    assert settings_hash(added) == settings_hash(run.settings)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (("epochs = 1", "epochs = 1\nepoch = 2"), "epoch"),
        (("epochs = 1", 'epochs = "one"'), "epochs"),
        (('student = ["vit", "cdeit"]', 'student = ["vit", "resnet"]'), "resnet"),
        (('student = ["vit", "cdeit"]', 'student = ["vit"]\nseed = [1, 2]'), "seed"),
        (('student = ["vit", "cdeit"]', "student = []"), "student"),
        (('baseline = "vit"', 'baseline = "resnet"'), "resnet"),
        (("[axes]", "[axis]"), "axis"),
        (("seeds = [0, 1]", "seeds = [0, 0]"), "seeds"),
        (("[axes]", '[slurm]\ngpus_per_job = "one"\n[axes]'), "gpus_per_job"),
        (("[axes]", "[slurm]\nqueue = 1\n[axes]"), "queue"),
        (('distill = "none"', 'distill = "soft"'), "'vit'"),  # the configuration TrainConfig refuses
    ],
)
def test_bad_study_files_are_refused_before_any_run(
    tiny_dataset: Path, tmp_path: Path, change: tuple[str, str], named: str
) -> None:
    spec = tmp_path / "study.toml"
    spec.write_text(_spec(tiny_dataset, tmp_path / "s").replace(*change))
    result = CliRunner().invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "study.toml" in output and named in output and "Traceback" not in output, output
    assert not (tmp_path / "s").exists()  # nothing planned, nothing written


def test_value_checks_name_the_file_and_the_data(tmp_path: Path) -> None:
    spec = tmp_path / "study.toml"
    spec.write_text(_spec(tmp_path / "nowhere", tmp_path / "s"))
    result = CliRunner().invoke(app, ["sweep", str(spec), "--dry-run"])
    assert result.exit_code == 2 and "nowhere" in result.output
    spec.write_text("[study\n")
    result = CliRunner().invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 2 and "study.toml" in result.output


def test_dry_run_prints_plan_and_steps_and_writes_nothing(tiny_dataset: Path, tmp_path: Path) -> None:
    spec = tmp_path / "study.toml"
    spec.write_text(_spec(tiny_dataset, tmp_path / "s"))
    result = CliRunner().invoke(app, ["sweep", str(spec), "--dry-run", "--set", "epochs=3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "2 configurations x 2 seeds = 4 runs" in lines[0]
    assert sum(line.startswith("[new] ") for line in lines) == 4
    trains = [line for line in lines if line.strip().startswith("train: ")]
    assert len(trains) == 4 and all("epochs=3" in t and "batch_size=32" in t for t in trains)
    assert all("lr_per_512" not in t and "out=" not in t for t in trains)  # defaults and the run directory left out
    assert sum(line.strip().startswith("evaluate: split=test") for line in lines) == 4
    assert not (tmp_path / "s").exists()
    result = CliRunner().invoke(app, ["sweep", str(spec), "--dry-run", "--seeds", "3,5"])
    assert "2 configurations x 2 seeds" in result.stdout and "-s5-" in result.stdout and "-s0-" not in result.stdout


def test_dry_run_shows_what_each_run_still_needs(tiny_dataset: Path, tmp_path: Path) -> None:
    """A killed run is resumed, a trained one only evaluated, a finished one left alone: read from its files."""
    study = _plan(_spec(tiny_dataset, tmp_path / "s"), tmp_path)
    partial, trained, done, _new = (r.run_dir(study.out) for r in study.runs)
    (partial / CHECKPOINT).parent.mkdir(parents=True)
    (partial / CHECKPOINT).write_bytes(b"")
    for run in (trained, done):
        run.mkdir(parents=True)
        (run / "summary.json").write_text("{}")
    (done / "eval").mkdir()
    (done / "eval" / "test.json").write_text("{}")
    lines = [line.strip() for line in describe(study)[1:]]
    steps = {}
    for line in lines:
        if line.startswith("["):
            name = line.split("] ")[1]
            steps[name] = [line.split("] ")[0][1:]]
        else:
            steps[name].append(line.split(":")[0].split(" ")[0])
    assert list(steps.values()) == [["partial", "resume", "evaluate"], ["trained", "evaluate"], ["done"],
                                    ["new", "train", "evaluate"]]  # fmt: skip


def test_a_run_step_calls_the_trainer_with_the_planned_config(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train and resume get the planned TrainConfig (resume: read back from the run, checked against the plan)."""
    import cdeit.train.core.trainer
    import cdeit.train.use.evaluate

    seen, evaluated = [], []
    monkeypatch.setattr(cdeit.train.core.trainer, "train", lambda cfg, resume=False: seen.append((cfg, resume)))
    monkeypatch.setattr(cdeit.train.use.evaluate, "evaluate", lambda *args: evaluated.append(args))
    text = _spec(tiny_dataset, tmp_path / "s").replace("workers = 1", "workers = 1\ntau = 2.5\ncompile = false")
    study = _plan(text, tmp_path)
    run = study.runs[3]  # cdeit, seed 1
    run_step("train", run, study.out)
    assert seen[-1][0].to_json() == run.settings and seen[-1][1] is False
    run_dir = run.run_dir(study.out)
    run_dir.mkdir(parents=True)  # a run to resume has the config.json its first start wrote
    (run_dir / "config.json").write_text(json.dumps(seen[-1][0].to_json()))
    run_step("resume", run, study.out)
    assert seen[-1][0].to_json() == run.settings and seen[-1][1] is True
    # (epochs no longer: since issue 23 a resume with more epochs extends the run, test_lifecycle.py)
    (run_dir / "config.json").write_text(json.dumps(seen[-1][0].to_json() | {"tau": 7.0}))
    with pytest.raises(CdeitError, match="tau"):  # the run on disk is not the planned one
        run_step("resume", run, study.out)
    run_step("evaluate", run, study.out)
    assert evaluated == [(str(run_dir), None, "test", None, None, "auto", 64, 1)]
    assert not (run_dir / "eval" / ".cdeit.lock").exists()  # the evaluation folder's lock was taken and released


def test_presets_plan_the_papers_grids(tiny_dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text("{}")
    counts = {"table2": 4, "table3": 5, "table4": 9, "fig5": 4}  # table4: all the paper's rows, SGD and RandAug too
    for name, configurations in counts.items():
        spec = preset_spec(name, str(tiny_dataset), str(cache), str(tmp_path / name))
        study = plan_study(spec, tmp_path / name / "study.toml")
        assert len(study.groups) == configurations and len(study.runs) == 3 * configurations
        assert set(PRESETS[name]["paper"]) <= set(study.groups)  # the paper's numbers find their rows
        write_plan(study, spec_text(spec))  # the study.toml written for a preset reads back the same ...
        assert read_spec(study.out / "study.toml") == spec
        again = plan_study(read_spec(study.out / "study.toml"), study.out / "study.toml")  # ... and plans the same
        assert [r.name for r in again.runs] == [r.name for r in study.runs]
    t3 = plan_study(preset_spec("table3", str(tiny_dataset), str(cache), str(tmp_path / "t3")), tmp_path / "x.toml")
    assert t3.baseline == "vit" and t3.groups["cdeit_soft"] == {"student": "cdeit", "distill": "soft"}
    t4 = plan_study(preset_spec("table4", str(tiny_dataset), str(cache), str(tmp_path / "t4")), tmp_path / "y.toml")
    assert t4.groups["sgd"]["opt"] == "sgd" and t4.groups["randaugment"]["aa"] == "rand-m9-n2"
    result = CliRunner().invoke(app, ["sweep", "--preset", "table9", "--data", "d", "--teacher-cache", "c",
                                      "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2 and "--preset" in result.output and "table9" in result.output


def test_set_and_seeds_are_written_into_the_study_toml(tiny_dataset: Path, tmp_path: Path) -> None:
    """A file changed by --set/--seeds is saved as changed: the study folder rerun with its own file plans the same."""
    spec = tmp_path / "study.toml"
    spec.write_text(_spec(tiny_dataset, tmp_path / "s"))
    raw = tomllib.loads(spec.read_text())
    raw["shared"]["epochs"], raw["study"]["seeds"] = 3, [4]
    study = plan_study(raw, spec)
    write_plan(study, spec_text(raw))
    again = plan_study(read_spec(study.out / "study.toml"), study.out / "study.toml")
    assert [r.name for r in again.runs] == [r.name for r in study.runs] and again.runs[0].settings["epochs"] == 3


def test_plan_json_keys_are_checked(tiny_dataset: Path, tmp_path: Path) -> None:
    study = _plan(_spec(tiny_dataset, tmp_path / "s"), tmp_path)
    write_plan(study, "")
    plan = json.loads((study.out / "plan.json").read_text())
    assert [r.name for r in planned_runs(read_plan(study.out))] == [r.name for r in study.runs]
    for broken, key in (({k: v for k, v in plan.items() if k != "runs"}, "runs"),
                        (plan | {"runs": [{"name": "x"}]}, "group"),
                        (plan | {"runs": [plan["runs"][0] | {"seed": "0"}]}, "seed")):  # fmt: skip
        (study.out / "plan.json").write_text(json.dumps(broken))
        with pytest.raises(CdeitError, match=key) as error:
            read_plan(study.out)
        assert "plan.json" in str(error.value)
    result = CliRunner().invoke(app, ["compare", str(study.out)])
    assert result.exit_code == 2 and "plan.json" in result.output and "Traceback" not in result.output


def test_threads_are_split_between_jobs() -> None:
    assert threads_per_job(4, cores=16) == 4
    assert threads_per_job(3, cores=2) == 1
    assert threads_per_job(1, cores=8) == 8


def test_the_progress_line_counts_the_runs_that_replace_finished_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With --jobs 2 and five runs, every line after a run ends already counts the run started in its place."""
    from types import SimpleNamespace

    from cdeit.train.studies import sweep

    class Quick:  # a worker process that ends at its second look
        returncode = 0

        def __init__(self) -> None:
            self.looks = 0

        def poll(self) -> int | None:
            self.looks += 1
            return 0 if self.looks > 1 else None

    monkeypatch.setattr(sweep, "_start", lambda *a: (Quick(), open(tmp_path / "log", "a")))  # noqa: SIM115
    monkeypatch.setattr(sweep.time, "sleep", lambda s: None)
    runs = [SimpleNamespace(name=f"r{i}") for i in range(5)]
    tally, lines = sweep.Tally(total=5), []
    sweep.run_local(tmp_path, runs, 2, tally, lambda n, info: lines.append((n, info)))
    done = 0
    for n, info in lines:
        done += n
        assert info.startswith(f"{done} done, {min(2, 5 - done)} running"), lines
    assert done == 5 and tally.running == 0


def test_paired_difference_has_a_t_interval() -> None:
    def group(name: str, values: dict[int, float]) -> Group:
        runs = [RunResult(Path(f"{name}{s}"), name, name, s, {}, {}, {}, {"accuracy": v}) for s, v in values.items()]
        return Group(name, name, runs)

    ref = group("ref", {0: 90.0, 1: 91.0, 2: 92.0, 3: 50.0})
    other = group("b", {0: 91.0, 1: 93.0, 2: 95.0})  # seed 3 unpaired: left out
    d = paired_difference(other, ref, "accuracy")
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t(0.975, 2 dof) x sd / sqrt(n), differences 1, 2, 3
    assert d["n"] == 3 and d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(2.0)
    assert d["low"] == pytest.approx(2.0 - half) and d["high"] == pytest.approx(2.0 + half)
    one = paired_difference(group("c", {0: 80.0}), ref, "accuracy")
    assert one["n"] == 1 and "low" not in one


# ------------------------------------------------------------------------------------------ comparing
def _predictions(n: int, seed: int) -> dict[str, np.ndarray]:
    """Predictions of a model better than chance over every corruption and severity (what `evaluate` saves)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, 10))
    label = rng.integers(0, 10, n)
    logits[np.arange(n), label] += rng.uniform(0, 3, n)
    corruption = rng.integers(0, 11, n)
    return {"probs": np.exp(logits) / np.exp(logits).sum(1, keepdims=True), "label": label, "corruption": corruption,
            "severity": np.where(corruption == 0, 0, rng.integers(1, 6, n)), "index": np.arange(n)}  # fmt: skip


def write_evaluated_run(run_dir: Path, settings: dict, seed: int) -> None:
    """A run directory as `cdeit train` and `cdeit evaluate` leave it, with made-up predictions (no training)."""
    from cdeit.train.use.evaluate import compute_metrics

    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(settings))
    (run_dir / "summary.json").write_text(json.dumps({"parameters": 5_000_000, "train_images_per_s": 80.0,
                                                      "train_seconds": 10.0, "steps": 7}))  # fmt: skip
    pred = _predictions(600, seed)
    np.savez(run_dir / "eval" / "test-predictions.npz", **pred)
    result = {"data": settings["data"], "fingerprint": "sha256:d", **compute_metrics(pred, [str(i) for i in range(10)])}
    (run_dir / "eval" / "test.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def evaluated(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A planned 2 x 2 study (ViT baseline, CdeiT) whose runs are evaluated, from made-up predictions."""
    root = tmp_path_factory.mktemp("evaluated")
    study = plan_study(tomllib.loads(_spec(tiny_dataset, root / "s")), root / "study.toml")
    write_plan(study, "")
    for k, run in enumerate(study.runs):
        write_evaluated_run(run.run_dir(study.out), run.settings, seed=k)
    return {"dir": study.out}


def test_compare_reports_groups_against_numpy(evaluated: dict, tmp_path: Path) -> None:
    from cdeit.train.use.evaluate import mce_report

    result = CliRunner().invoke(app, ["compare", str(evaluated["dir"]), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    assert [r["model"] for r in rows] == ["ViT (vit)", "CdeiT (cdeit)"] and {r["n"] for r in rows} == {"2"}
    runs = sorted((evaluated["dir"] / "runs").iterdir())
    evals = {r.name: json.loads((r / "eval" / "test.json").read_text()) for r in runs}

    def preds(run: Path) -> dict:
        with np.load(run / "eval" / "test-predictions.npz") as z:
            return {k: z[k] for k in z.files}

    for row, group in zip(rows, ("vit", "cdeit"), strict=True):
        mine = sorted(r for r in runs if r.name.startswith(group + "-"))
        for title, get in (("accuracy (%)", lambda e: 100 * e["accuracy"]),
                           ("clean accuracy (%)", lambda e: 100 * e["clean"]["accuracy"]),
                           ("corrupted accuracy (%)", lambda e: 100 * e["corrupted"]["accuracy"]),
                           ("ECE", lambda e: e["ece"])):  # fmt: skip
            values = np.array([get(evals[r.name]) for r in mine])
            mean, std = (float(x) for x in row[title].split(" ± "))
            digits = 4 if title == "ECE" else 2
            assert mean == pytest.approx(values.mean(), abs=10**-digits) and std == pytest.approx(
                values.std(ddof=1), abs=10**-digits
            ), title
        base = {r.name.split("-s")[1][0]: r for r in runs if r.name.startswith("vit-")}
        mces = [100 * mce_report(preds(r), preds(base[r.name.split("-s")[1][0]]))["mce"] for r in mine]
        mean, std = (float(x) for x in row["mCE (%)"].split(" ± "))
        assert mean == pytest.approx(np.mean(mces), abs=0.01) and std == pytest.approx(np.std(mces, ddof=1), abs=0.01)
    diffs = list(csv.DictReader((tmp_path / "compare-differences.csv").open()))
    assert [d["group"] for d in diffs] == ["cdeit"] and diffs[0]["n pairs"] == "2"
    report = (tmp_path / "compare.md").read_text()
    assert "## Paired differences against vit" in report and "no distillation" in report
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG


def test_compare_refuses_other_data_caches_and_baselines(evaluated: dict, tmp_path: Path) -> None:
    runs = sorted((evaluated["dir"] / "runs").iterdir())
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(runs[0], a)
    shutil.copytree(runs[1], b)
    numbers = json.loads((b / "eval" / "test.json").read_text())
    (b / "eval" / "test.json").write_text(json.dumps(numbers | {"fingerprint": "sha256:other"}))
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "different datasets" in result.output
    for k, run in enumerate((a, b)):  # distilled from two different caches
        cache = tmp_path / f"cache{k}"
        cache.mkdir()
        (cache / "manifest.json").write_text(json.dumps({"provenance": {"weights_hash": str(k)}}))
        config = json.loads((run / "config.json").read_text()) | {"distill": "soft", "teacher_cache": str(cache)}
        (run / "config.json").write_text(json.dumps(config))
        e = json.loads((run / "eval" / "test.json").read_text())
        (run / "eval" / "test.json").write_text(json.dumps(e | {"fingerprint": numbers["fingerprint"]}))
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "different teacher caches" in result.output
    for k, run in enumerate((a, b)):  # one cache again, but mCE against two baselines
        config = json.loads((run / "config.json").read_text()) | {"teacher_cache": str(tmp_path / "cache0")}
        (run / "config.json").write_text(json.dumps(config))
        e = json.loads((run / "eval" / "test.json").read_text())
        (run / "eval" / "test.json").write_text(json.dumps(e | {"mce": {"mce": 1.0}, "baseline": f"base{k}"}))
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "baselines of different settings" in result.output
    vit = [r for r in runs if r.name.startswith("vit-")]
    for run, base in zip((a, b), vit, strict=True):  # `cdeit evaluate --baseline` with the ViT run of each seed
        e = json.loads((run / "eval" / "test.json").read_text())
        (run / "eval" / "test.json").write_text(json.dumps(e | {"baseline": str(base)}))
    result = CliRunner().invoke(app, ["compare", str(a), str(b), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert "2 baseline runs of one configuration" in " ".join(result.output.split())
    assert "reused by 2 runs" in result.output and "not recorded" in result.output  # this cache has no throughput


@pytest.mark.parametrize(
    ("file", "edit", "key"),
    [
        ("config.json", lambda c: c.pop("seed"), "seed"),
        ("config.json", lambda c: c.update(student=3), "student"),
        ("eval/test.json", lambda e: e.pop("fingerprint"), "fingerprint"),
        ("eval/test.json", lambda e: e.update(accuracy="high"), "accuracy"),
        ("eval/test.json", lambda e: e.update(mce=[1]), "mce"),
        ("summary.json", lambda s: s.pop("train_seconds"), "train_seconds"),
        ("summary.json", lambda s: s.update(parameters=True), "parameters"),
    ],
)
def test_compare_names_the_file_and_key_it_cannot_read(
    evaluated: dict, tmp_path: Path, file: str, edit: object, key: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(next((evaluated["dir"] / "runs").iterdir()), run)
    value = json.loads((run / file).read_text())
    edit(value)  # type: ignore[operator]
    (run / file).write_text(json.dumps(value))
    result = CliRunner().invoke(app, ["compare", str(run), "--out", str(tmp_path / "o")])
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and Path(file).name in output and repr(key) in output, output
    assert len(result.output.strip().splitlines()) <= 3 and "Traceback" not in output  # one sentence, wrapped


def test_paper_table_puts_the_papers_numbers_beside_the_measured_ones() -> None:
    def group(name: str, student: str, distill: str, acc: list[float], mce: list[float]) -> Group:
        config = {"student": student, "distill": distill, "head_strategy": None}
        pairs = enumerate(zip(acc, mce, strict=True))
        runs = [RunResult(Path(f"{name}{s}"), name, name, s, config, {}, {"train_seconds": 10.0},
                          {"accuracy": a, "mce": m}) for s, (a, m) in pairs]  # fmt: skip
        return Group(name, name, runs)

    groups = [group("deit_soft", "deit", "soft", [96.0, 97.0], [50.0, 60.0]),
              group("vit", "vit", "none", [95.0], [100.0])]  # fmt: skip
    columns, rows = paper_table("table3", groups)
    assert columns == ["Model", "Distill. Type", "accuracy (%) measured", "accuracy (%) paper", "mCE (%) measured",
                       "mCE (%) paper"]  # fmt: skip
    assert rows[0] == ["deit", "soft", "96.50 ± 0.71 (n = 2)", "97.0", "55.00 ± 7.07 (n = 2)", "0.46"]
    assert rows[1][:4] == ["vit", "none", "95.00 (n = 1)", "96.4"] and rows[1][5] == "-"
    _, rows = paper_table("fig5", [group("vit", "vit", "none", [95.0], [100.0])])
    assert rows[0][0] == "-"  # the ViT has no head strategy
    (line,) = cache_savings({"cache/": groups[0].runs})  # no cache there: its figures are not recorded
    assert "not recorded" in line and "reused by 2 runs" in line


def test_compare_groups_each_way_to_teach_from_one_teacher(evaluated: dict, tmp_path: Path) -> None:
    """A plain cache, a K-view cache of the same teacher and the online teacher are three groups, comparable."""
    from cdeit.common.views import AUG_KEYS

    run = next(r for r in sorted((evaluated["dir"] / "runs").iterdir()) if r.name.startswith("cdeit-"))
    teacher = {"teacher": "t", "weights_hash": "sha256:w", "head_hash": "sha256:h"}
    views = {k: 0.5 for k in AUG_KEYS} | {"views": 3, "view_seed": 0}
    caches = {"plain": teacher, "views": teacher | views, "other": teacher | {"weights_hash": "x"}}
    for name, provenance in caches.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({"provenance": provenance}))
    arms = {"a": ("plain", {}), "b": ("views", {}), "c": ("plain", {"online_teacher": True})}
    for arm, (cache, extra) in arms.items():
        shutil.copytree(run, tmp_path / arm)
        config = json.loads((run / "config.json").read_text()) | {"distill": "soft"} | extra
        config["teacher_cache"] = str(tmp_path / cache)
        (tmp_path / arm / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["compare", *(str(tmp_path / a) for a in arms), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "o" / "compare.md").read_text()
    assert all(f"| CdeiT ({arm}) | soft | linear | 1 |" in table for arm in arms), table  # 3 groups, not 1 of 3
    assert "reused by 1 run " in table and "1 run ran the teacher online instead" in table
    config = json.loads((tmp_path / "a" / "config.json").read_text()) | {"teacher_cache": str(tmp_path / "other")}
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["compare", *(str(tmp_path / a) for a in arms), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "different teacher caches" in result.output


def test_run_state_comes_from_its_files_and_a_held_run_is_left_alone(
    tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cdeit.common.lock import output_lock
    from cdeit.train.studies.sweep import BUSY, _find, run_job

    text = _spec(tiny_dataset, tmp_path / "s")
    study = _plan(text, tmp_path)
    run_dir = study.runs[0].run_dir(study.out)
    assert run_status(run_dir) == "new"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / CHECKPOINT).write_bytes(b"")
    assert run_status(run_dir) == "partial"
    (run_dir / "summary.json").write_text("{}")
    assert run_status(run_dir) == "trained"
    with pytest.raises(CdeitError, match="other"):
        _find(study.runs, "other", str(study.out))
    write_plan(study, text)
    with output_lock(run_dir, "cdeit train"):  # another process works on this run: `cdeit train` or a sweep's job
        assert run_job(str(study.out), study.runs[0].name) == BUSY
    assert f"PID {os.getpid()}" in capsys.readouterr().out
    assert not (run_dir / "eval").exists()


# ------------------------------------------------------------------------------------------ a real study
def _sweep_process(spec: Path) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "cdeit.common.cli", "sweep", str(spec)]
    return subprocess.Popen(argv, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when_a_run_is_half_done(proc: subprocess.Popen, runs: Path, timeout: float = 240) -> Path | None:
    """SIGKILL the sweep (and its worker) as soon as some run has a checkpoint but no summary."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for run in sorted(runs.glob("*")) if runs.is_dir() else []:
            if (run / CHECKPOINT).is_file() and not (run / "summary.json").is_file():
                os.killpg(proc.pid, signal.SIGKILL)  # the sweep's own session: the sweep and its worker
                proc.wait()
                return run
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    return None


@pytest.mark.slow
def test_a_study_end_to_end(tiny_dataset: Path, tmp_path: Path) -> None:
    """ViT and CdeiT (one seed, two epochs) and a run that fails: killed mid-run, rerun (the killed run resumes,
    the failure is reported with its log), finished by submitit (evaluation only), then compared."""
    spec = tmp_path / "study.toml"
    text = _spec(tiny_dataset, tmp_path / "s", epochs=2).replace("seeds = [0, 1]", "seeds = [0]")
    configs = '[[configs]]\nstudent = "vit"\n[[configs]]\nstudent = "cdeit"'
    text = text.replace('[axes]\nstudent = ["vit", "cdeit"]', configs)
    spec.write_text(text + '\n[[configs]]\nname = "too-big"\nstudent = "vit"\nbatch_size = 4096\n')  # runs last
    killed = _kill_when_a_run_is_half_done(_sweep_process(spec), tmp_path / "s" / "runs")
    assert killed is not None and killed.name.startswith("vit-"), (
        "no run was caught between its first checkpoint and its end"
    )
    assert run_status(killed) == "partial"

    result = CliRunner().invoke(app, ["sweep", str(spec), "--jobs", "2"])
    assert result.exit_code == 1, result.output  # the too-big run failed, the others finished
    runs = {r.name.split("-s0-")[0]: r for r in (tmp_path / "s" / "runs").iterdir()}
    assert [run_status(runs[g]) for g in ("too-big", "vit", "cdeit")] == ["new", "done", "done"]
    output = " ".join(result.output.split())
    bad = runs["too-big"]
    assert (
        f"failed: {bad.name} (exit 2); log: {bad / 'sweep.log'}" in output and "2 done, 0 running, 1 failed" in output
    )
    assert "4096" in (bad / "sweep.log").read_text()  # the trainer's sentence, in the job's log
    assert "resuming" in (killed / "sweep.log").read_text()  # continued from its checkpoint, not restarted
    epochs = [json.loads(x)["epoch"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]

    # the same folder without the failing configuration, finished by submitit: the ViT run is skipped, CdeiT's
    # (trained, its evaluation removed) only evaluated
    trained = {name: (runs[name] / "summary.json").stat().st_mtime_ns for name in ("vit", "cdeit")}
    (runs["cdeit"] / "eval" / "test.json").unlink()
    spec.write_text(text + '\n[slurm]\ncluster = "local"\ntime_min = 10\narray_parallelism = 1\n')
    if importlib.util.find_spec("submitit") is not None:
        result = CliRunner().invoke(app, ["sweep", str(spec), "--launcher", "submitit"])
        assert result.exit_code == 0, result.output
        assert "1 of 2 runs already finished" in result.output and "submitted 1 jobs" in result.output
        assert any((tmp_path / "s" / "submitit").rglob("*_log.out"))
    else:
        assert CliRunner().invoke(app, ["sweep", str(spec)]).exit_code == 0
    assert run_status(runs["cdeit"]) == "done"
    assert {n: (runs[n] / "summary.json").stat().st_mtime_ns for n in trained} == trained  # not trained again

    result = CliRunner().invoke(app, ["compare", str(tmp_path / "s"), "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "c" / "compare.csv").open()))
    assert [r["model"] for r in rows] == ["ViT (vit)", "CdeiT (cdeit)"] and {r["n"] for r in rows} == {"1"}
    accuracy = json.loads((runs["cdeit"] / "eval" / "test.json").read_text())["accuracy"]
    assert float(rows[1]["accuracy (%)"]) == pytest.approx(100 * accuracy, abs=0.01)
    assert rows[0]["mCE (%)"] == "100.00" and (tmp_path / "c" / "compare.png").read_bytes()[:8] == PNG
