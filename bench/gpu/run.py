"""The GPU check: one command on a lent GPU machine measures cdeit's GPU path end to end (bench/gpu/README.md).

Stages, each in its own process under its own time limit; the JSON and Markdown results in OUT are rewritten
after every stage, so whatever finished is kept when a later stage fails, times out or the call is killed:

  selfcheck   GPU name, versions, the carried ffcv (its libraries per ldd) writes and reads a tiny .beton
  data        `cdeit data synth` + `cdeit data prepare --corruptions generate` (495k / 22k / 22k images)
  precompute  `cdeit precompute-teacher` of deit3_small_patch16_224 (random weights) over all of them
  train       bench/bench_train.py's (a) cached, (b) online-teacher, (c) no-distillation trainers
  recipe      `cdeit train` with Table 1: 15 epochs if the budget allows, else 1 epoch (said so)

    python bench/gpu/run.py --out OUT                                  # on the device (bench/gpu/device.sh)
    python bench/gpu/run.py --out OUT --preset tiny --device cpu       # the CPU rehearsal (rehearse.sh)
    python bench/gpu/run.py --out OUT --preset dry --device cpu        # the smallest CPU dry run (tests)

This process uses the standard library only; the stages import torch, ffcv and cdeit.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfcheck import StageError  # beside this file; the script's folder is first on sys.path

HERE = Path(__file__).resolve().parent
RESULT_JSON, RESULT_MD, RESULT_LOG = "gpu-check.json", "gpu-check.md", "gpu-check.log"
STAGES = ("selfcheck", "data", "precompute", "train", "recipe")
NEEDS = {"data": ("selfcheck",), "precompute": ("data",), "train": ("data",), "recipe": ("data", "precompute")}
GOALS = {  # issue 14: the figures the project promises for one H100 / H200: (target, higher is better)
    "precompute_pass1_images_per_s": (18_000, True),  # 539k images in under 30 s, FFCV loading included
    "precompute_command_s": (30, False),  # the whole `cdeit precompute-teacher`: build, pass 1, head fit, pass 2
    "recipe_train_images_per_s": (62_000, True),  # 495k images x 15 epochs in under 2 minutes
    "recipe_15_epochs_s": (120, False),
    "cached_over_online": (5.0, True),
}
PAPER_EPOCHS = 15


@dataclass(frozen=True)
class Preset:
    """Sizes and limits of one kind of run: `full` for the device, `tiny` and `dry` for CPU dry runs."""

    synth: tuple[int, int]  # train, test images per class of the procedural CIFAR-10
    per_class_per_type: str  # `cdeit data prepare` TRAIN,VAL,TEST
    teacher: str
    head_epochs: int
    batch_size: int
    compile: bool
    steps: int
    warmup: int
    repeats: int
    budget_s: float
    limits: dict[str, float]  # each stage's own cap, seconds
    minimum: dict[str, float]  # the least time worth starting a stage with
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    precompute_batch: int | None = None  # None: the command's default (1024 on CUDA)
    types: str | None = None  # `cdeit data prepare --types`; None: its default (clean and all ten corruptions)


PRESETS = {
    # 4500 + 400 photographs per class give the paper's 495k / 22k / 22k (grouped split, 11 image types).
    "full": Preset(
        synth=(4500, 400), per_class_per_type="4500,200,200", teacher="deit3_small_patch16_224", head_epochs=50,
        batch_size=1024, compile=True, steps=40, warmup=15, repeats=2, budget_s=450,
        limits={"selfcheck": 60, "data": 150, "precompute": 120, "train": 150, "recipe": 420},
        minimum={"selfcheck": 20, "data": 40, "precompute": 40, "train": 60, "recipe": 60},
    ),
    # 2 photographs per class per type: 220 / 110 / 110 images; a timm test model as teacher.
    "tiny": Preset(
        synth=(12, 4), per_class_per_type="2,1,1", teacher="test_vit", head_epochs=2, batch_size=8, compile=False,
        steps=2, warmup=1, repeats=1, budget_s=600, precompute_batch=32,
        limits={"selfcheck": 120, "data": 120, "precompute": 120, "train": 180, "recipe": 120},
        minimum={s: 5 for s in STAGES}, model_kwargs={"depth": 2, "embed_dim": 48, "num_heads": 2},
    ),
    # The smallest run of every stage (tests/test_gpu_check.py): 1 photograph per class per type of 2 types,
    # 20 / 20 / 20 images; 3 photographs per class are the least the grouped split takes.
    "dry": Preset(
        synth=(2, 1), per_class_per_type="1,1,1", teacher="test_vit", head_epochs=1, batch_size=4, compile=False,
        steps=2, warmup=1, repeats=1, budget_s=600, precompute_batch=32, types="clean,brightness",
        limits={"selfcheck": 120, "data": 120, "precompute": 120, "train": 180, "recipe": 120},
        minimum={s: 5 for s in STAGES}, model_kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2},
    ),
}  # fmt: skip


# ============================================================================================ the orchestrator


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="Folder for gpu-check.json, gpu-check.md and gpu-check.log.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu (the full preset refuses a CPU-only auto).")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/cdeit-gpu-check"), help="Dataset, cache and runs.")
    p.add_argument("--budget", type=float, help="Seconds for all stages (default: the preset's).")
    p.add_argument("--per-class-per-type", help="A dataset subset instead of the preset's, e.g. 900,40,40.")
    p.add_argument("--recipe-epochs", type=int, help="Force this many epochs (default: 15 if they fit, else 1).")
    p.add_argument("--stages", default=",".join(STAGES), help="Comma-separated stages to run.")
    p.add_argument("--limit", action="append", default=[], metavar="STAGE=SECONDS", help="Override a stage's cap.")
    p.add_argument("--stage", help=argparse.SUPPRESS)  # child mode: run one stage from --spec
    p.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.stage is None and args.out is None:
        p.error("--out is required")
    return args


def make_spec(args: argparse.Namespace) -> dict[str, Any]:
    """Everything a stage process needs, resolved once (paths absolute)."""
    preset = PRESETS[args.preset]
    limits = dict(preset.limits)
    for item in args.limit:
        stage, _, seconds = item.partition("=")
        if stage not in STAGES or not seconds.replace(".", "", 1).isdigit():
            raise SystemExit(f"--limit {item!r}: write STAGE=SECONDS with a stage of {', '.join(STAGES)}.")
        limits[stage] = float(seconds)
    minimum = {k: min(v, limits[k]) for k, v in preset.minimum.items()}
    preset = dataclasses.replace(preset, limits=limits, minimum=minimum)
    if args.per_class_per_type:
        preset = dataclasses.replace(preset, per_class_per_type=args.per_class_per_type)
    work = args.workdir.resolve()
    return {
        "preset": args.preset,
        "settings": dataclasses.asdict(preset),
        "device": args.device,
        "workdir": str(work),
        "cifar": str(work / "cifar"),
        "data": str(work / f"data-{preset.per_class_per_type.replace(',', '-')}"),
        "cache": str(work / "cache"),
        "runs": str(work / "runs"),
        "repo": str(HERE.parents[1]),
        "recipe_epochs": args.recipe_epochs,
    }


@dataclass
class Check:
    """The orchestrator's state: what ran, how long, what it found; written out after each stage."""

    args: argparse.Namespace
    spec: dict[str, Any]
    started: float = field(default_factory=time.monotonic)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def budget(self) -> float:
        return self.args.budget or self.spec["settings"]["budget_s"]

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.started)

    def ok(self, name: str) -> bool:
        return self.stages.get(name, {}).get("status") == "ok"

    def result(self, name: str) -> dict[str, Any]:
        return self.stages.get(name, {}).get("result") or {}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.stage:
        return child(args.stage, json.loads(args.spec.read_text()))
    spec = make_spec(args)
    check = Check(args, spec)
    args.out.mkdir(parents=True, exist_ok=True)
    Path(spec["workdir"]).mkdir(parents=True, exist_ok=True)
    (args.out / RESULT_LOG).unlink(missing_ok=True)
    wanted = [s for s in STAGES if s in {x.strip() for x in args.stages.split(",")}]
    say(f"preset {args.preset}, device {args.device}, budget {check.budget:.0f} s, stages {', '.join(wanted)}")
    for name in wanted:
        run_stage(check, name, wanted)
        write_results(check)
        if name == "selfcheck" and not check.ok(name):
            say(f"self-check failed: {check.stages[name].get('error')} -- nothing else ran.")
            return 3
    failed = [n for n in wanted if not check.ok(n)]
    verdict = f"not ok: {', '.join(failed)}" if failed else "all ok"
    say(f"done in {time.monotonic() - check.started:.0f} s; {verdict}")
    return 1 if failed else 0


def say(line: str) -> None:
    print(f"[gpu-check] {line}", flush=True)


def stage_limit(check: Check, name: str, wanted: list[str]) -> float:
    """The stage's own cap, cut so that the stages after it keep their minimum time."""
    s = check.spec["settings"]
    later = sum(s["minimum"][n] for n in wanted[wanted.index(name) + 1 :])
    return min(s["limits"][name], check.remaining() - later)


def run_stage(check: Check, name: str, wanted: list[str]) -> None:
    missing = [n for n in NEEDS.get(name, ()) if n in wanted and not check.ok(n)]
    limit = stage_limit(check, name, wanted)
    entry: dict[str, Any] = {"status": "skipped", "limit_s": round(max(limit, 0), 1)}
    check.stages[name] = entry
    if missing:
        entry["error"] = f"needs {', '.join(missing)}, which did not finish"
    elif limit < check.spec["settings"]["minimum"][name]:
        entry["error"] = f"only {max(limit, 0):.0f} s of the budget left"
    else:
        if name == "recipe":
            check.spec["recipe"] = plan_recipe(check, limit)
        entry["status"] = "running"  # what the results say if the whole call is stopped during this stage
        write_results(check)
        entry |= spawn(check, name, limit)
    found = entry.get("error") or summary_line(name, entry.get("result") or {})
    say(f"{name}: {entry['status']} in {entry.get('seconds', 0):.1f} s (limit {entry['limit_s']:.0f} s): {found}")


def spawn(check: Check, name: str, limit: float) -> dict[str, Any]:
    """Run one stage in its own process group, killed at its limit; returns status, seconds, result, error."""
    work = Path(check.spec["workdir"])
    spec_path, result_path, log_path = (work / f"{name}.{x}" for x in ("spec.json", "result.json", "log"))
    spec_path.write_text(json.dumps(check.spec | {"result": str(result_path)}))
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--spec", str(spec_path)]
    env = os.environ | {"PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code: int | None = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the stage and every process it started
            proc.wait()
            code = None
    entry: dict[str, Any] = {"seconds": round(time.monotonic() - start, 2)}
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    entry["result"] = result.get("result")
    append_log(check, name, log_path)
    if code is None:
        return entry | {"status": "timeout", "error": f"stopped at its {limit:.0f} s limit"}
    if code != 0:
        return entry | {"status": "failed", "error": result.get("error") or last_line(log_path, code)}
    return entry | {"status": "ok"}


def last_line(path: Path, code: int) -> str:
    lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return f"exit status {code}: {lines[-1] if lines else 'no output'}"


def append_log(check: Check, name: str, log_path: Path, keep: int = 400) -> None:
    """The stage's output (its last `keep` lines) into OUT/gpu-check.log, which comes back from the device."""
    lines = log_path.read_text(errors="replace").splitlines()
    cut = f"... {len(lines) - keep} lines left out ...\n" if len(lines) > keep else ""
    with open(check.args.out / RESULT_LOG, "a") as fh:
        fh.write(f"===== {name} =====\n{cut}" + "\n".join(lines[-keep:]) + "\n")


def plan_recipe(check: Check, limit: float) -> dict[str, Any]:
    """15 epochs if the measured cached-trainer rate says they fit in `limit`, else 1 (or the forced count)."""
    forced = check.spec.get("recipe_epochs")
    n_train = (check.result("data").get("images") or {}).get("train")
    rate = (check.result("train").get("median") or {}).get("a_cached")
    estimate = None
    if n_train and rate:
        estimate = PAPER_EPOCHS * n_train / rate * 1.15 + 60  # evaluation, compilation and start-up on top
    if forced:
        epochs, why = forced, f"--recipe-epochs {forced}"
    elif estimate is not None and estimate <= limit:
        epochs, why = PAPER_EPOCHS, f"15 epochs estimated at {estimate:.0f} s, within the {limit:.0f} s left"
    else:
        reason = f"estimated {estimate:.0f} s" if estimate else "no training rate measured"
        epochs, why = 1, f"1 epoch: 15 would not fit in the {limit:.0f} s left ({reason})"
    return {"epochs": epochs, "why": why, "estimate_15_s": estimate}


# ============================================================================================ the results


def summary_line(name: str, r: dict[str, Any]) -> str:
    """One line of what a stage found, for the console and the Markdown table."""
    if not r:
        return ""
    if name == "selfcheck":
        extra = f", bf16 matmul {r['matmul_tflops']:.0f} TFLOP/s" if r.get("matmul_tflops") else ""
        return (f"{r.get('device_name')}, torch {r.get('torch')}, timm {r.get('timm')}, ffcv {r.get('ffcv')} "
                f"(tiny .beton read back){extra}")  # fmt: skip
    if name == "data":
        n = r.get("images", {})
        counts = " / ".join(f"{n.get(k, 0):,}" for k in ("train", "val", "test"))
        return f"{counts} images, synth {r['synth_s']:.1f} s, prepare {r['prepare_s']:.1f} s"
    if name == "precompute":
        return (f"{r['images']:,} images, pass 1 {r['images_per_s']:,.0f} images/s, "
                f"{r['images'] / r['wall_s']:,.0f} images/s end to end ({r['wall_s']:.1f} s)")  # fmt: skip
    if name == "train":
        m = r["median"]
        return (f"a {m['a_cached']:,.0f}, b {m['b_online']:,.0f}, c {m['c_none']:,.0f} images/s; "
                f"a/b {r['a_over_b']:.2f}x, loader {r['loader_share']:.1%}")  # fmt: skip
    if name == "recipe":
        return (f"{r['epochs']} epoch(s) in {r['wall_s']:.1f} s, {r['train_images_per_s']:,.0f} train images/s"
                + (f"; 15 epochs: {r['fifteen_epochs_s']:.0f} s ({r['fifteen_epochs_basis']})"
                   if r.get("fifteen_epochs_s") else ""))  # fmt: skip
    return ""


def goals(check: Check) -> dict[str, Any]:
    """Each promised figure against what was measured (None where the stage did not finish)."""
    pre, train, recipe = check.result("precompute"), check.result("train"), check.result("recipe")
    found = {
        "precompute_pass1_images_per_s": pre.get("images_per_s"),
        "precompute_command_s": pre.get("wall_s"),
        "recipe_train_images_per_s": recipe.get("train_images_per_s"),
        "recipe_15_epochs_s": recipe.get("fifteen_epochs_s"),
        "cached_over_online": train.get("a_over_b"),
    }
    out = {}
    for k, v in found.items():
        target, higher = GOALS[k]
        met = None if v is None else (v >= target if higher else v <= target)
        out[k] = {"goal": f"{'>=' if higher else '<='} {target:,}", "measured": v, "met": met}
    if recipe.get("fifteen_epochs_basis"):
        out["recipe_15_epochs_s"]["basis"] = recipe["fifteen_epochs_basis"]
    return out


def write_results(check: Check) -> None:
    """OUT/gpu-check.json and OUT/gpu-check.md, each written under a temporary name and renamed."""
    doc = {
        "check": "cdeit GPU check (bench/gpu/run.py)",
        "command": [sys.executable, *sys.argv],
        "preset": check.spec["preset"],
        "settings": check.spec["settings"],
        "device_requested": check.spec["device"],
        "budget_s": check.budget,
        "elapsed_s": round(time.monotonic() - check.started, 1),
        "recipe_plan": check.spec.get("recipe"),
        "stages": check.stages,
        "goals": goals(check),
    }
    write_atomic(check.args.out / RESULT_JSON, json.dumps(doc, indent=1, default=str) + "\n")
    write_atomic(check.args.out / RESULT_MD, markdown(doc))


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown(doc: dict[str, Any]) -> str:
    st, sc = doc["stages"], (doc["stages"].get("selfcheck") or {}).get("result") or {}
    lines = [
        "# cdeit GPU check",
        "",
        f"Device {sc.get('device_name', '?')}; python {sc.get('python', '?')}, torch {sc.get('torch', '?')}, "
        f"timm {sc.get('timm', '?')}, ffcv {sc.get('ffcv', '?')}; preset `{doc['preset']}`, "
        f"{doc['elapsed_s']:.0f} s of a {doc['budget_s']:.0f} s budget.",
        "",
        "| stage | status | wall s | limit s | result |",
        "|---|---|---|---|---|",
    ]
    for name, e in st.items():
        what = e.get("error") or summary_line(name, e.get("result") or {})
        lines.append(f"| {name} | {e['status']} | {e.get('seconds', 0):.1f} | {e['limit_s']:.0f} | {what} |")
    lines += ["", "| goal (issue 14) | target | measured | met |", "|---|---|---|---|"]
    for k, g in doc["goals"].items():
        v = "-" if g["measured"] is None else f"{g['measured']:,.2f}"
        met = "-" if g["met"] is None else ("yes" if g["met"] else "no")
        lines.append(f"| {k}{' (' + g['basis'] + ')' if g.get('basis') else ''} | {g['goal']} | {v} | {met} |")
    lines += train_table((st.get("train") or {}).get("result")) + recipe_note(st.get("recipe"), doc["recipe_plan"])
    return "\n".join(lines) + "\n"


def train_table(r: dict[str, Any] | None) -> list[str]:
    if not r:
        return []
    names = {
        "a_cached": "(a) cached logits",
        "b_online": "(b) teacher online at 224px",
        "c_none": "(c) no distillation",
    }
    out = ["", f"Training throughput: batch {r['batch_size']}, bf16 autocast {r['autocast_bf16']}, "
           f"torch.compile {r['compile']}, {r['steps']} timed steps after {r['warmup']}, {r['repeats']} repeats.", "",
           "| trainer | images/s (median) | runs |", "|---|---|---|"]  # fmt: skip
    for k, label in names.items():
        out.append(f"| {label} | {r['median'][k]:,.0f} | {', '.join(f'{x:,.0f}' for x in r['rates'][k])} |")
    out.append(
        f"\na/b = {r['a_over_b']:.2f}x, a/c = {r['a_over_c']:.3f}, loader share of a step {r['loader_share']:.1%}."
    )
    return out


def recipe_note(entry: dict[str, Any] | None, plan: dict[str, Any] | None) -> list[str]:
    if not entry or not plan:
        return []
    r = entry.get("result") or {}
    text = f"\nPaper recipe (Table 1): {plan['why']}."
    if r:
        text += f" Ran {r['epochs']} epoch(s): {r['wall_s']:.1f} s wall, val accuracy {r.get('val_acc', 0):.2%}."
        if r.get("fifteen_epochs_basis") != "measured":
            text += (f" 15 epochs extrapolated: {r['fifteen_epochs_s']:.0f} s of training (15 x the measured epoch, "
                     "its compilation included; not measured).")  # fmt: skip
    return [text]


# ============================================================================================ the stages


def child(name: str, spec: dict[str, Any]) -> int:
    """Run one stage; its result (or its one-line error) goes to spec['result'] as JSON."""
    result_path = Path(spec["result"])
    try:
        result = STAGE_FUNCTIONS[name](spec)
    except Exception as exc:  # one line for the results; the traceback of an unexpected one goes to the log
        from cdeit.common.errors import CdeitError

        if not isinstance(exc, StageError | CdeitError):
            traceback.print_exc()
        line = str(exc) if isinstance(exc, StageError | CdeitError) else f"{type(exc).__name__}: {exc}"
        print(f"{name} failed: {line}", file=sys.stderr, flush=True)
        write_atomic(result_path, json.dumps({"error": line}))
        return 3
    write_atomic(result_path, json.dumps({"result": result}, default=str))
    return 0


def cdeit(argv: list[str]) -> tuple[float, str]:
    """Run one `cdeit ...` command line in this process: (wall seconds, its standard output).

    Its output still goes to the stage's log; a non-zero status raises with the command's own error sentence.
    """
    import contextlib

    from cdeit.common.cli import run_command

    print(f"$ cdeit {' '.join(argv)}", flush=True)
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(Tee(out, sys.stdout)), contextlib.redirect_stderr(Tee(err, sys.stderr)):
        status = run_command(argv)
    seconds = time.perf_counter() - start
    if status != 0:
        said = [ln for ln in err.getvalue().splitlines() if ln.startswith("error:")]
        why = said[-1] if said else "gpu-check.log has its output"
        raise StageError(f"`cdeit {' '.join(argv[:2])} ...` exited with status {status}: {why}")
    return seconds, out.getvalue()


def stage_selfcheck(spec: dict[str, Any]) -> dict[str, Any]:
    """GPU and versions, the carried ffcv's libraries, and a tiny .beton written and read back on the device."""
    from importlib import metadata

    from selfcheck import cdeit_install, check_device, ffcv_libraries, matmul_tflops, tiny_beton

    info: dict[str, Any] = check_device(spec["device"], spec["preset"])
    import timm
    import torch

    info |= {"torch": torch.__version__, "timm": timm.__version__}
    for dist in ("numpy", "numba", "h5py", "ffcv"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            raise StageError(f"{dist} is not installed (was the carry folder installed?)") from None
    info["ffcv_libraries"] = ffcv_libraries()
    info |= cdeit_install(spec["repo"])
    info["beton_images"] = tiny_beton(Path(spec["workdir"]) / "selfcheck", info["device"])
    if info["device"].startswith("cuda"):
        info["matmul_tflops"] = matmul_tflops()
    return info


def stage_data(spec: dict[str, Any]) -> dict[str, Any]:
    s, cores = spec["settings"], os.cpu_count() or 1
    existed = Path(spec["data"], "manifest.json").is_file()  # then prepare checks its recipe and reuses it
    synth, _ = cdeit(["data", "synth", "--to", spec["cifar"], "--train-per-class", str(s["synth"][0]),
                      "--test-per-class", str(s["synth"][1])])  # fmt: skip
    prepare, _ = cdeit(["data", "prepare", "--cifar10", spec["cifar"], "--corruptions", "generate",
                        "--out", spec["data"], "--per-class-per-type", s["per_class_per_type"],
                        "--workers", str(cores), *(["--types", s["types"]] if s["types"] else [])])  # fmt: skip
    manifest = json.loads(Path(spec["data"], "manifest.json").read_text())
    splits = manifest["splits"]
    return {
        "synth_s": synth, "prepare_s": prepare, "workers": cores, "reused": existed,
        "images": {k: v["count"] for k, v in splits.items()},
        "beton_mib": {k: round(v["beton_bytes"] / 2**20, 1) for k, v in splits.items()},
    }  # fmt: skip


PRECOMPUTE_LINE = re.compile(r"([\d,]+) images in ([\d.]+) s \(([\d,.]+) images/s\).*total ([\d.]+) s")


def stage_precompute(spec: dict[str, Any]) -> dict[str, Any]:
    """`cdeit precompute-teacher` over every split; pass-1 figures parsed from its summary line."""
    import shutil

    s = spec["settings"]
    shutil.rmtree(spec["cache"], ignore_errors=True)  # timed from scratch, never resumed
    argv = ["precompute-teacher", "--data", spec["data"], "--out", spec["cache"], "--teacher", s["teacher"],
            "--random-weights", "--device", spec["device"], "--head-epochs", str(s["head_epochs"])]  # fmt: skip
    if s["precompute_batch"]:
        argv += ["--batch-size", str(s["precompute_batch"])]
    wall, output = cdeit(argv)
    match = PRECOMPUTE_LINE.search(output)
    if not match:
        raise StageError("precompute-teacher printed no summary line ('N images in X s (R images/s) ... total T s')")
    images, seconds, rate, total = match.groups()
    manifest = json.loads(Path(spec["cache"], "manifest.json").read_text())
    return {
        "teacher": s["teacher"], "images": int(images.replace(",", "")), "pass1_s": float(seconds),
        "images_per_s": float(rate.replace(",", "")), "command_total_s": float(total), "wall_s": wall,
        "complete": manifest.get("complete"), "head_epochs": s["head_epochs"],
    }  # fmt: skip


class Tee(io.TextIOBase):
    """Writes to several text streams (the summary line is parsed and still logged)."""

    encoding = "utf-8"

    def __init__(self, *streams: Any):
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def stage_train(spec: dict[str, Any]) -> dict[str, Any]:
    """bench/bench_train.py's three trainers, built and measured through its own functions."""
    sys.path.insert(0, str(HERE.parent))
    import bench_train

    s = spec["settings"]
    trainers = bench_train.build_trainers(
        spec["data"], s["batch_size"], spec["device"], s["compile"], workers=os.cpu_count(),
        out=Path(spec["runs"]) / "bench-train", model_kwargs=s["model_kwargs"],
    )  # fmt: skip
    result = bench_train.benchmark(trainers, s["steps"], s["warmup"], s["repeats"])
    bench_train.report(result)
    return result


def stage_recipe(spec: dict[str, Any]) -> dict[str, Any]:
    """`cdeit train` with Table 1's settings (student deit, hard distillation, batch 1024) on the cache."""
    import shutil

    s, plan = spec["settings"], spec["recipe"]
    run = Path(spec["runs"]) / "recipe"
    shutil.rmtree(run, ignore_errors=True)
    argv = ["train", "--data", spec["data"], "--teacher-cache", spec["cache"], "--out", str(run), "--epochs",
            str(plan["epochs"]), "--batch-size", str(s["batch_size"]), "--device", spec["device"],
            "--workers", str(os.cpu_count() or 2), "--compile" if s["compile"] else "--no-compile"]  # fmt: skip
    if s["model_kwargs"]:
        argv += ["--model-kwargs", json.dumps(s["model_kwargs"])]
    wall, _ = cdeit(argv)
    summary = json.loads((run / "summary.json").read_text())
    fifteen = wall if plan["epochs"] == PAPER_EPOCHS else summary["train_seconds"] / plan["epochs"] * PAPER_EPOCHS
    return {
        "epochs": summary["epochs"], "wall_s": wall, "train_seconds": summary["train_seconds"],
        "train_images_per_s": summary["train_images_per_s"], "val_acc": summary.get("val_acc"),
        "fifteen_epochs_s": fifteen,
        "fifteen_epochs_basis": "measured" if plan["epochs"] == PAPER_EPOCHS else "extrapolated from 1 epoch",
    }  # fmt: skip


STAGE_FUNCTIONS = {
    "selfcheck": stage_selfcheck,
    "data": stage_data,
    "precompute": stage_precompute,
    "train": stage_train,
    "recipe": stage_recipe,
}


if __name__ == "__main__":
    sys.exit(main())
