"""`cdeit sweep`: run a study's planned runs, N at a time on this machine or as a SLURM array through submitit.

Each run is one job, which calls the trainer and the evaluator with the run's TrainConfig (as DeiT's submitit
launcher calls `main(args)`), in one Python process, so a job pays torch's import once (5.5 s on the 2-core
machine). What a job still has to do is read from the run's files when it starts, so a rerun skips finished runs
and resumes killed ones wherever they ran. A job holds the run directory's lock (common/lock.py, the lock
`cdeit train` takes) while it works, so two sweeps of one folder never train one run twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdeit.common.console import console, progress_bar
from cdeit.common.errors import CdeitError
from cdeit.common.lock import LockHeld, output_lock
from cdeit.train.studies.study import (
    EVAL_SPLIT,
    PlannedRun,
    Step,
    Study,
    changed_settings,
    planned_runs,
    read_plan,
    run_config,
    run_status,
    step_line,
    steps_for,
)

LOG = "sweep.log"  # each run's job output, beside its metrics
BUSY = 75  # EX_TEMPFAIL: another process holds the run's lock
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# ------------------------------------------------------------------------------------------ one job
def run_job(study_dir: str, name: str, threads: int | None = None) -> int:
    """Train (or resume) and evaluate one planned run; 0 when done, BUSY when another process holds the run.

    This is what a local worker process and a submitit job both execute; a failing step raises.
    """
    if threads:
        import torch

        torch.set_num_threads(threads)
    run = _find(planned_runs(read_plan(study_dir)), name, study_dir)
    run_dir = run.run_dir(study_dir)
    try:
        with output_lock(run_dir, "cdeit sweep"):
            for step in steps_for(run_status(run_dir)):
                print(f"{name}: {step_line(step, run)}", flush=True)
                run_step(step, run, study_dir)
    except LockHeld as held:
        print(f"{name} is being worked on by {held.holder}; leaving it to that job.", flush=True)
        return BUSY
    return 0


def run_step(step: Step, run: PlannedRun, study_dir: str | Path) -> None:
    """Call the trainer (`cdeit train`, or `--resume RUN`) or the evaluator (`cdeit evaluate RUN`) for one run."""
    cfg = run_config(run, study_dir)
    if step == "evaluate":  # mCE is left to `compare`, against the study's baseline group
        from cdeit.train.use.evaluate import check_outputs, evaluate

        check_outputs(Path(cfg.out), "last", EVAL_SPLIT)  # before the lock, which creates RUN/eval
        with output_lock(Path(cfg.out) / "eval", "cdeit evaluate"):
            evaluate(cfg.out, None, EVAL_SPLIT, None, None, cfg.device, cfg.eval_batch_size, cfg.workers)
        return
    from cdeit.train.core.rundir import resume_config
    from cdeit.train.core.trainer import train

    if step == "resume":  # the run's own config.json, checked against the planned settings
        cfg = resume_config(cfg.out, changed_settings(cfg.to_json()))
    train(cfg, resume=step == "resume")


def _find(runs: list[PlannedRun], name: str, study_dir: str) -> PlannedRun:
    for run in runs:
        if run.name == name:
            return run
    raise CdeitError(f"{study_dir} plans no run named {name}; rerun `cdeit sweep` on the study file.")


def submitit_job(study_dir: str, name: str) -> None:
    """submitit's entry: a failing run raises, so the job's state says FAILED and its log holds the output."""
    status = run_job(study_dir, name)
    if status != 0:
        raise RuntimeError(f"run {name} failed with exit status {status}; see the job's log")


# ------------------------------------------------------------------------------------------ progress
@dataclass
class Tally:
    """What the study's one progress bar shows."""

    total: int
    done: int = 0
    running: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run name, log path)

    def info(self) -> str:
        return f"{self.done} done, {self.running} running, {len(self.failed)} failed"


def _report_failure(tally: Tally, name: str, log: str, why: str) -> None:
    tally.failed.append((name, log))
    console.print(f"[red]failed:[/] {name} ({why}); log: {log}")


# ------------------------------------------------------------------------------------------ local
def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Cores split evenly over the jobs that run at once (at least one each), so the machine is not oversubscribed."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


def visible_gpus() -> list[str]:
    """The GPUs local jobs are spread over: CUDA_VISIBLE_DEVICES if set, else every GPU torch sees."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _start(study_dir: Path, run: PlannedRun, threads: int, gpu: str | None) -> tuple[subprocess.Popen, Any]:
    run_dir = run.run_dir(study_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / LOG, "a")  # noqa: SIM115  (closed when the process ends)
    env = os.environ | dict.fromkeys(THREAD_VARS, str(threads)) | {"OMP_WAIT_POLICY": "PASSIVE"}
    if gpu is not None:  # job slot k uses GPU k mod count; with one GPU every job shares it
        env["CUDA_VISIBLE_DEVICES"] = gpu
    argv = [sys.executable, "-m", "cdeit.train.studies.sweep", str(study_dir), run.name, str(threads)]
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env), log


def run_local(study_dir: Path, runs: list[PlannedRun], jobs: int, tally: Tally, advance: Callable) -> None:
    """Keep `jobs` worker processes busy until every run has finished or failed."""
    threads, gpus = threads_per_job(jobs), visible_gpus() if jobs > 1 else []
    waiting, active, slots = list(runs), {}, {}

    def fill() -> None:
        while waiting and len(active) < jobs:
            run = waiting.pop(0)
            slot = min(set(range(jobs)) - set(slots.values()))
            slots[run.name] = slot
            active[run.name] = (run, *_start(study_dir, run, threads, gpus[slot % len(gpus)] if gpus else None))
            tally.running += 1

    try:
        fill()
        advance(0, info=tally.info())
        while active:
            time.sleep(0.2)
            finished = 0
            for name, (run, proc, log) in list(active.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del active[name], slots[name]
                tally.running -= 1
                finished += 1
                if proc.returncode == 0:
                    tally.done += 1
                else:
                    why = "another sweep holds it" if proc.returncode == BUSY else f"exit {proc.returncode}"
                    _report_failure(tally, name, str(run.run_dir(study_dir) / LOG), why)
            if finished:
                fill()  # the next runs start before the line says how many run
                advance(finished, info=tally.info())
    finally:  # interrupted: stop the workers this sweep started; their checkpoints let a rerun resume
        for _run, proc, log in active.values():
            proc.terminate()
            proc.wait()
            log.close()


# ------------------------------------------------------------------------------------------ submitit
def submitit_executor(study_dir: Path, slurm: dict[str, Any], jobs: int) -> Any:
    """An AutoExecutor with the study's [slurm] table: partition, GPUs and CPUs per job, time, array width."""
    try:
        import submitit
    except ImportError:
        raise CdeitError("--launcher submitit needs the submitit package; `pip install submitit`.") from None
    executor = submitit.AutoExecutor(folder=study_dir / "submitit" / "%j", cluster=slurm.get("cluster"))
    executor.update_parameters(
        name=f"cdeit-{study_dir.name}",
        timeout_min=slurm.get("time_min", 24 * 60),
        gpus_per_node=slurm.get("gpus_per_job"),
        cpus_per_task=slurm.get("cpus_per_task"),
        mem_gb=slurm.get("mem_gb"),
        slurm_partition=slurm.get("partition"),
        slurm_array_parallelism=slurm.get("array_parallelism", jobs),
    )
    return executor


def run_submitit(study: Study, runs: list[PlannedRun], jobs: int, tally: Tally, advance: Callable) -> None:
    """Submit the runs as one job array and follow it; the study folder records what each job finished."""
    executor = submitit_executor(study.out, study.slurm, jobs)
    names = [r.name for r in runs]
    submitted = executor.map_array(submitit_job, [str(study.out)] * len(runs), names)
    job_id = submitted[0].job_id.split("_")[0]
    console.print(f"submitted {len(submitted)} jobs ({job_id}); logs in {study.out}/submitit")
    tally.running = len(submitted)
    advance(0, info=tally.info())
    pending = dict(zip(names, submitted, strict=True))
    while pending:
        time.sleep(1.0)
        for name, job in list(pending.items()):
            if not job.done():
                continue
            del pending[name]
            tally.running -= 1
            if job.exception() is None:
                tally.done += 1
            else:
                _report_failure(tally, name, str(job.paths.stdout), f"job {job.job_id} {job.state}")
            advance(1, info=tally.info())


# ------------------------------------------------------------------------------------------ the study
def sweep(study: Study, jobs: int = 1, launcher: str = "local") -> Tally:
    """Run every planned run that is not done; returns the tally (failed runs are reported, not raised)."""
    if jobs < 1:
        raise CdeitError(f"--jobs must be at least 1, not {jobs}.")
    if launcher not in ("local", "submitit"):
        raise CdeitError(f"--launcher {launcher!r} is unknown; choose local or submitit.")
    todo = [r for r in study.runs if run_status(r.run_dir(study.out)) != "done"]
    tally = Tally(total=len(study.runs), done=len(study.runs) - len(todo))
    if tally.done:
        console.print(f"{tally.done} of {tally.total} runs already finished in {study.out}; skipping them")
    with progress_bar(f"study {study.name}", tally.total, unit="runs") as advance:
        advance(tally.done, info=tally.info())
        if todo and launcher == "local":
            run_local(study.out, todo, jobs, tally, advance)
        elif todo:
            run_submitit(study, todo, jobs, tally, advance)
    console.print(f"study {study.name}: {tally.info()} of {tally.total} runs -> {study.out}")
    return tally


def describe(study: Study) -> list[str]:
    """`--dry-run`: one line per run (status and directory) followed by the steps it still needs."""
    lines = [f"study {study.name}: {len(study.groups)} configurations x {len(study.seeds)} seeds = "
             f"{len(study.runs)} runs in {study.out}"]  # fmt: skip
    for run in study.runs:
        status = run_status(run.run_dir(study.out))
        lines.append(f"[{status}] {run.name}")
        lines += ["    " + step_line(step, run) for step in steps_for(status)]
    return lines


if __name__ == "__main__":  # a local worker: python -m cdeit.train.studies.sweep STUDY_DIR RUN_NAME [THREADS]
    from cdeit.common.console import friendly_errors

    args = sys.argv[1:]
    sys.exit(friendly_errors(run_job)(args[0], args[1], int(args[2]) if len(args) > 2 else None))
