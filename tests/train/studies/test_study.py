"""`cdeit sweep` and the study-aware `cdeit compare`: planning, refusals, kill and resume, statistics, submitit."""

from __future__ import annotations

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
from cdeit.train.studies.compare import ONLINE_SLOWDOWN, Group, RunResult, paired_difference
from cdeit.train.studies.presets import PRESETS, preset_spec, to_toml
from cdeit.train.studies.study import CHECKPOINT, plan_study, run_status, settings_hash, tomllib, train_argv
from cdeit.train.studies.sweep import threads_per_job

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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("epochs = 1", "epochs = 1\nepoch = 2"), "unknown key 'epoch'"),
        (("epochs = 1", 'epochs = "one"'), "key 'epochs' = 'one' should be an integer"),
        (('student = ["vit", "cdeit"]', 'student = ["vit", "resnet"]'), "'resnet' should be one of 'vit', 'deit'"),
        (('student = ["vit", "cdeit"]', 'student = ["vit"]\nseed = [1, 2]'), "list seeds in [study] seeds"),
        (('student = ["vit", "cdeit"]', "student = []"), "[axes] student should be a non-empty list"),
        (('baseline = "vit"', 'baseline = "resnet"'), "baseline 'resnet' is not a configuration"),
        (("[axes]", "[axis]"), "unknown section(s) axis"),
        (("seeds = [0, 1]", "seeds = [0, 0]"), "repeats a seed"),
        (("[axes]", '[slurm]\ngpus_per_job = "one"\n[axes]'), "[slurm] gpus_per_job = 'one' should be a positive"),
        (("[axes]", "[slurm]\nqueue = 1\n[axes]"), "[slurm] has unknown key(s) queue"),
        (('distill = "none"', 'distill = "soft"'), "configuration 'vit' (seed 0) is invalid"),
    ],
)
def test_bad_study_files_are_refused_before_any_run(
    tiny_dataset: Path, tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    spec = tmp_path / "study.toml"
    spec.write_text(_spec(tiny_dataset, tmp_path / "s").replace(*change))
    result = CliRunner().invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "s").exists()  # nothing planned, nothing written


def test_value_checks_name_the_file_and_the_data(tmp_path: Path) -> None:
    spec = tmp_path / "study.toml"
    spec.write_text(_spec(tmp_path / "nowhere", tmp_path / "s"))
    result = CliRunner().invoke(app, ["sweep", str(spec), "--dry-run"])
    assert result.exit_code == 2 and "does not exist" in result.output and "nowhere" in result.output
    spec.write_text("[study\n")
    result = CliRunner().invoke(app, ["sweep", str(spec)])
    assert result.exit_code == 2 and "is not valid TOML" in result.output


def test_dry_run_prints_plan_and_commands_and_writes_nothing(tiny_dataset: Path, tmp_path: Path) -> None:
    spec = tmp_path / "study.toml"
    spec.write_text(_spec(tiny_dataset, tmp_path / "s"))
    result = CliRunner().invoke(app, ["sweep", str(spec), "--dry-run", "--set", "epochs=3"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "2 configurations x 2 seeds = 4 runs" in lines[0]
    assert sum(line.startswith("[new] ") for line in lines) == 4
    assert sum("cdeit train --student" in line and "--epochs 3" in line for line in lines) == 4
    assert sum("cdeit evaluate" in line for line in lines) == 4
    assert not (tmp_path / "s").exists()
    result = CliRunner().invoke(app, ["sweep", str(spec), "--dry-run", "--seeds", "3,5"])
    assert "2 configurations x 2 seeds" in result.stdout and "-s5-" in result.stdout and "-s0-" not in result.stdout


def test_train_command_line_reproduces_the_planned_config(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planned `cdeit train` argv, parsed by the real command, gives back the planned TrainConfig."""
    import cdeit.train.core.trainer

    seen = []
    monkeypatch.setattr(cdeit.train.core.trainer, "train", lambda cfg, resume=False: seen.append((cfg, resume)) or {})
    text = _spec(tiny_dataset, tmp_path / "s").replace("workers = 1", "workers = 1\ntau = 2.5\ncompile = false")
    run = _plan(text, tmp_path).runs[3]  # cdeit, seed 1
    for resume in (False, True):
        if resume:  # a run to resume has the config.json its first start wrote (`--resume RUN` reads it)
            run.run_dir(tmp_path / "s").mkdir(parents=True)
            (run.run_dir(tmp_path / "s") / "config.json").write_text(json.dumps(seen[-1][0].to_json()))
        result = CliRunner().invoke(app, train_argv(run, tmp_path / "s", resume=resume))
        assert result.exit_code == 0, result.output
        assert seen[-1][0].to_json() == run.settings and seen[-1][1] is resume


def test_presets_plan_the_papers_grids(tiny_dataset: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text("{}")
    counts = {"table2": 4, "table3": 5, "table4": 7, "fig5": 4}
    for name, configurations in counts.items():
        spec = preset_spec(name, str(tiny_dataset), str(cache), str(tmp_path / name))
        assert tomllib.loads(to_toml(spec)) == spec  # the study.toml written for a preset reads back the same
        study = plan_study(spec, tmp_path / name / "study.toml")
        assert len(study.groups) == configurations and len(study.runs) == 3 * configurations
        assert set(PRESETS[name]["paper"]) <= set(study.groups)  # the paper's numbers find their rows
    t3 = plan_study(preset_spec("table3", str(tiny_dataset), str(cache), str(tmp_path / "t3")), tmp_path / "x.toml")
    assert t3.baseline == "vit" and t3.groups["cdeit_soft"] == {"student": "cdeit", "distill": "soft"}
    result = CliRunner().invoke(app, ["sweep", "--preset", "table9", "--data", "d", "--teacher-cache", "c",
                                      "--out", str(tmp_path)])  # fmt: skip
    assert result.exit_code == 2 and "--preset 'table9' is unknown" in result.output


def test_threads_are_split_between_jobs() -> None:
    assert threads_per_job(4, cores=16) == 4
    assert threads_per_job(3, cores=2) == 1
    assert threads_per_job(1, cores=8) == 8


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


@pytest.fixture(scope="module")
def study(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2 x 2 study, killed in the middle of a run, then rerun to the end."""
    root = tmp_path_factory.mktemp("study")
    spec = root / "study.toml"
    spec.write_text(_spec(tiny_dataset, root / "s", epochs=2))
    killed = _kill_when_a_run_is_half_done(_sweep_process(spec), root / "s" / "runs")
    assert killed is not None, "no run was caught between its first checkpoint and its end"
    assert run_status(killed) == "partial"
    finished_before = {p.parent.name: p.stat().st_mtime_ns for p in (root / "s" / "runs").glob("*/summary.json")}
    result = CliRunner().invoke(app, ["sweep", str(spec), "--jobs", "2"])
    assert result.exit_code == 0, result.output
    return {"dir": root / "s", "spec": spec, "killed": killed, "finished_before": finished_before,
            "rerun": result.output}  # fmt: skip


@pytest.mark.slow
def test_sweep_resumes_the_killed_run_and_skips_finished_ones(study: dict) -> None:
    runs = sorted((study["dir"] / "runs").iterdir())
    assert len(runs) == 4 and all(run_status(r) == "done" for r in runs)
    killed = study["killed"]
    assert "resuming" in (killed / "sweep.log").read_text()  # continued from its checkpoint, not restarted
    epochs = [json.loads(x)["epoch"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    for name, mtime in study["finished_before"].items():  # finished runs were not touched
        assert (study["dir"] / "runs" / name / "summary.json").stat().st_mtime_ns == mtime
    plan = json.loads((study["dir"] / "plan.json").read_text())
    assert sorted(r["name"] for r in plan["runs"]) == [r.name for r in runs]
    again = CliRunner().invoke(app, ["sweep", str(study["spec"])])
    assert again.exit_code == 0 and "4 of 4 runs already finished" in again.output


@pytest.mark.slow
def test_compare_reports_groups_against_numpy(study: dict, tmp_path: Path) -> None:
    from cdeit.train.use.evaluate import mce_report

    result = CliRunner().invoke(app, ["compare", str(study["dir"]), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = list(__import__("csv").DictReader((tmp_path / "compare.csv").open()))
    assert [r["model"] for r in rows] == ["ViT (vit)", "CdeiT (cdeit)"] and {r["n"] for r in rows} == {"2"}
    runs = sorted((study["dir"] / "runs").iterdir())
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
    diffs = list(__import__("csv").DictReader((tmp_path / "compare-differences.csv").open()))
    assert [d["group"] for d in diffs] == ["cdeit"] and diffs[0]["n pairs"] == "2"
    report = (tmp_path / "compare.md").read_text()
    assert "## Paired differences against vit" in report and "no distillation" in report
    assert (tmp_path / "compare.png").read_bytes()[:8] == PNG


@pytest.mark.slow
def test_compare_refuses_other_data_caches_and_baselines(study: dict, tmp_path: Path) -> None:
    runs = sorted((study["dir"] / "runs").iterdir())
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
    assert "reused by 2 runs" in result.output and f"x{ONLINE_SLOWDOWN}" in result.output


@pytest.mark.slow
def test_a_failed_run_is_reported_with_its_log_and_the_others_finish(tiny_dataset: Path, tmp_path: Path) -> None:
    spec = tmp_path / "study.toml"
    text = _spec(tiny_dataset, tmp_path / "s").replace("seeds = [0, 1]", "seeds = [0]")
    text = text.replace('student = ["vit", "cdeit"]', "batch_size = [32, 4096]").replace("batch_size = 32\n", "")
    spec.write_text(text.replace('baseline = "vit"', "").replace("\n[shared]", '\n[shared]\nstudent = "vit"'))
    result = CliRunner().invoke(app, ["sweep", str(spec), "--jobs", "2"])
    assert result.exit_code == 1, result.output
    good, bad = (next((tmp_path / "s" / "runs").glob(f"batch_size-{b}-*")) for b in (32, 4096))
    assert run_status(good) == "done" and run_status(bad) == "new"
    output = " ".join(result.output.split())
    assert f"failed: {bad.name} (exit 2); log: {bad / 'sweep.log'}" in output
    assert "1 done, 0 running, 1 failed" in output
    assert "larger than the 220 training images" in (bad / "sweep.log").read_text()


@pytest.mark.slow
def test_submitit_local_executor_runs_a_study(tiny_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    spec = tmp_path / "study.toml"
    text = _spec(tiny_dataset, tmp_path / "s").replace("seeds = [0, 1]", "seeds = [0]")
    spec.write_text(text.replace('student = ["vit", "cdeit"]', 'student = ["vit"]') +
                    '\n[slurm]\ncluster = "local"\ntime_min = 10\narray_parallelism = 1\n')  # fmt: skip
    result = CliRunner().invoke(app, ["sweep", str(spec), "--launcher", "submitit"])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "s" / "runs").iterdir()
    assert run_status(run) == "done" and "submitted 1 jobs" in result.output
    assert any((tmp_path / "s" / "submitit").rglob("*_log.out"))


def test_run_state_comes_from_its_files_and_a_held_run_is_left_alone(tiny_dataset: Path, tmp_path: Path) -> None:
    import fcntl

    from cdeit.train.studies.study import write_plan
    from cdeit.train.studies.sweep import BUSY, LOCK, _find, run_job

    text = _spec(tiny_dataset, tmp_path / "s")
    study = _plan(text, tmp_path)
    run_dir = study.runs[0].run_dir(study.out)
    assert run_status(run_dir) == "new"
    from cdeit.train.core.trainer import CHECKPOINT as TRAINER_CHECKPOINT

    assert CHECKPOINT == TRAINER_CHECKPOINT
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / CHECKPOINT).write_bytes(b"")
    assert run_status(run_dir) == "partial"
    (run_dir / "summary.json").write_text("{}")
    assert run_status(run_dir) == "trained"
    with pytest.raises(CdeitError, match="plans no run named"):
        _find(study.runs, "other", str(study.out))
    write_plan(study, text)
    with open(run_dir / LOCK, "a") as fh:  # another job works on this run
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_job(str(study.out), study.runs[0].name) == BUSY
    assert not (run_dir / "eval").exists()


def test_paper_table_puts_the_papers_numbers_beside_the_measured_ones() -> None:
    from cdeit.train.studies.compare import cache_savings, paper_table

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
    (line,) = cache_savings({"cache/": groups[0].runs})
    assert "time not recorded" in line and "reused by 2 runs" in line and f"{20 * (ONLINE_SLOWDOWN - 1):,.0f} s" in line


def test_compare_groups_each_way_to_teach_from_one_teacher(study: dict, tmp_path: Path) -> None:
    """A plain cache, a K-view cache of the same teacher and the online teacher are three groups, comparable."""
    from cdeit.common.views import AUG_KEYS

    run = next(r for r in sorted((study["dir"] / "runs").iterdir()) if r.name.startswith("cdeit-"))
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
    assert "reused by 1 runs" in table and "1 run ran the teacher online instead" in table
    config = json.loads((tmp_path / "a" / "config.json").read_text()) | {"teacher_cache": str(tmp_path / "other")}
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["compare", *(str(tmp_path / a) for a in arms), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "different teacher caches" in result.output
