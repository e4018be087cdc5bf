"""A study: one TOML file planned into many ordinary training runs (shared options x axes x seeds).

The study folder is the single source of truth. It holds `study.toml` (what was asked), `plan.json` (the
expanded runs) and `runs/NAME/`, one ordinary `cdeit train` run directory per planned run. Whether a run
is finished, killed or not started is read from its files, so a rerun, another machine or a SLURM job
sees the same state. Nothing here imports torch: planning and `--dry-run` stay fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cdeit.common.atomic import atomic_path, check_keys, field, plain_name, read_json_object, write_json
from cdeit.common.dataset import load_manifest
from cdeit.common.errors import CdeitError
from cdeit.train.core.config import ALIASES, TrainConfig, accepts
from cdeit.train.core.rundir import CHECKPOINT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PLAN = "plan.json"
SPEC = "study.toml"
RUNS = "runs"
EVAL_SPLIT = "test"  # each run is evaluated on this split when it finishes training
SECTIONS = ("study", "shared", "axes", "configs", "slurm")
STUDY_KEYS = ("name", "out", "seeds", "baseline", "preset")
SLURM_KEYS = {"cluster": str, "partition": str, "gpus_per_job": int, "cpus_per_task": int, "time_min": int,
              "mem_gb": int, "array_parallelism": int}  # fmt: skip
PLANNED_BY_STUDY = ("out", "seed")  # set per run by the study, never by the file

MAX_RUNS = 10_000  # planned runs per study (configurations x seeds): more is a typo, and planning it would hang
NOT_HASHED = ("out", "workers", "eval_batch_size")  # machinery that does not change what a run learns
Status = Literal["done", "trained", "partial", "new"]
Step = Literal["train", "resume", "evaluate"]


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a study: its configuration group, seed, settings and directory name."""

    group: str  # the configuration's readable name, shared by its seeds
    seed: int
    overrides: dict[str, Any]  # the group's own settings beyond the shared ones
    settings: dict[str, Any]  # the whole TrainConfig, `out` included
    name: str  # run directory name: readable, seed, short hash of the settings

    def run_dir(self, study_dir: str | Path) -> Path:
        return Path(study_dir) / RUNS / self.name


@dataclass
class Study:
    """A parsed and validated study file; `runs` is the expanded plan."""

    name: str
    out: Path
    seeds: list[int]
    shared: dict[str, Any]
    groups: dict[str, dict[str, Any]]  # readable name -> overrides, in plan order
    runs: list[PlannedRun]
    baseline: str | None = None
    preset: str | None = None
    slurm: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "preset": self.preset,
            "baseline": self.baseline,
            "seeds": self.seeds,
            "shared": self.shared,
            "groups": self.groups,
            "slurm": self.slurm,
            "runs": [dataclasses.asdict(r) for r in self.runs],
        }


# ------------------------------------------------------------------------------------------ reading
def read_spec(path: str | Path) -> dict[str, Any]:
    """The study file as a dict, or one sentence naming the file and what is wrong."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CdeitError(f"study file {path} does not exist; write one (docs/studies.md) or use --preset.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CdeitError(f"study file {path} could not be read ({exc}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise CdeitError(f"study file {path} is not valid TOML ({exc}); see docs/studies.md for the layout.") from None


def check_options(options: dict[str, Any], where: str, file: Path) -> dict[str, Any]:
    """`options` as TrainConfig field names, each value of its field's type (TrainConfig.check_mapping, the one
    checker of settings); the settings a study plans per run (out, seed) are refused here."""
    for key in options:
        name = ALIASES.get(key, key.replace("-", "_"))
        if name in PLANNED_BY_STUDY:
            fix = "list seeds in [study] seeds" if name == "seed" else "set the study folder with [study] out or --out"
            raise CdeitError(f"{file}: {where} sets {key!r}, which the study sets per run; {fix}.")
    return TrainConfig.check_mapping(options, f"{file}: {where}")


def _table(spec: dict[str, Any], key: str, file: Path) -> dict[str, Any]:
    value = spec.get(key, {})
    if not isinstance(value, dict):
        raise CdeitError(f"{file}: [{key}] should be a table of options, not {type(value).__name__}.")
    return value


# ------------------------------------------------------------------------------------------ planning
def _slug(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, dict | list) else str(value)
    keep = "".join(c if c.isalnum() or c in ".-+" else "-" for c in text)
    return "-".join(p for p in keep.split("-") if p) or "x"


def readable_name(overrides: dict[str, Any]) -> str:
    """`{'student': 'deit', 'distill': 'soft'}` -> `deit_soft`; numbers keep their key (`weight_decay-0.01`)."""
    if not overrides:
        return "base"
    parts = [_slug(v) if isinstance(v, str) else f"{k}-{_slug(v)}" for k, v in overrides.items()]
    return "_".join(parts)


def settings_hash(settings: dict[str, Any]) -> str:
    """Eight hex digits of SHA-256 over the settings that change what a run learns and differ from TrainConfig's
    defaults: an option added to cdeit later (at its default) leaves the names of planned runs as they were."""
    defaults = TrainConfig().to_json()
    kept = {
        k: v for k, v in sorted(settings.items()) if k not in NOT_HASHED and (k not in defaults or v != defaults[k])
    }
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:8]


def _groups(spec: dict[str, Any], file: Path) -> dict[str, dict[str, Any]]:
    """[[configs]] in order, then the cross product of [axes]; each a readable name -> its overrides."""
    groups: dict[str, dict[str, Any]] = {}
    configs = spec.get("configs", [])
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise CdeitError(f"{file}: configs should be an array of tables ([[configs]]), one per configuration.")
    for i, raw in enumerate(configs):
        raw = dict(raw)
        name = raw.pop("name", None)
        overrides = check_options(raw, f"[[configs]] #{i + 1}", file)
        _add_group(groups, str(name) if name is not None else readable_name(overrides), overrides, file)
    axes = _table(spec, "axes", file)
    for key, values in axes.items():
        if not isinstance(values, list) or not values:
            raise CdeitError(f"{file}: [axes] {key} should be a non-empty list of values, e.g. {key} = [a, b].")
    _check_size(len(groups) + math.prod(len(vs) for vs in axes.values()), 1, file)
    checked_axes = {k: [check_options({k: v}, "[axes]", file) for v in vs] for k, vs in axes.items()}
    if checked_axes:
        for combo in itertools.product(*checked_axes.values()):
            overrides = {k: v for part in combo for k, v in part.items()}
            _add_group(groups, readable_name(overrides), overrides, file)
    return groups or {"base": {}}


def _add_group(groups: dict[str, dict[str, Any]], name: str, overrides: dict[str, Any], file: Path) -> None:
    if not name or not all(c.isalnum() or c in "._+-" for c in name):
        raise CdeitError(f"{file}: configuration name {name!r} should use letters, digits and . _ + - only.")
    if name in groups:
        raise CdeitError(f"{file}: two configurations are named {name!r}; give each [[configs]] its own name.")
    groups[name] = overrides


def _check_size(groups: int, seeds: int, file: Path) -> None:
    """Refuse a plan of more than MAX_RUNS runs before it is expanded (`--dry-run` included)."""
    if groups * seeds > MAX_RUNS:
        raise CdeitError(
            f"{file}: the study plans {groups:,} configurations x {seeds:,} seeds = {groups * seeds:,} runs, more than "
            f"the limit of {MAX_RUNS:,}; split it into smaller studies (fewer [axes] values or seeds)."
        )


def _seeds(study: dict[str, Any], file: Path) -> list[int]:
    seeds = study.get("seeds", [0])
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        _check_size(1, seeds, file)
        seeds = list(range(seeds))  # `seeds = 3` means seeds 0, 1, 2
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise CdeitError(
            f"{file}: [study] seeds should be a list of integers (e.g. [0, 1, 2]) or a count, not {seeds!r}."
        )
    if len(set(seeds)) != len(seeds):
        raise CdeitError(f"{file}: [study] seeds {seeds} repeats a seed; list each seed once.")
    return seeds


def _check_slurm(slurm: dict[str, Any], file: Path) -> dict[str, Any]:
    bad = sorted(set(slurm) - set(SLURM_KEYS))
    if bad:
        raise CdeitError(f"{file}: [slurm] has unknown key(s) {', '.join(bad)}; it takes {', '.join(SLURM_KEYS)}.")
    for key, value in slurm.items():
        kind = SLURM_KEYS[key]
        if not accepts(value, kind) or (kind is int and value < 1):
            what = "a positive integer" if kind is int else "a string"
            raise CdeitError(f"{file}: [slurm] {key} = {value!r} should be {what}.")
    return slurm


def plan_study(
    spec: dict[str, Any], file: str | Path, out: str | Path | None = None, teacher_module: str | None = None
) -> Study:
    """Validate a study file's contents and expand its runs; refuses any bad key or value before anything runs.
    A `teacher_module` the file names is imported by its runs only when `teacher_module` (this command line's
    --teacher-module) names the same file: a study file never chooses code to run."""
    file = Path(file)
    unknown = sorted(set(spec) - set(SECTIONS))
    if unknown:
        raise CdeitError(f"{file}: unknown section(s) {', '.join(unknown)}; a study file has {', '.join(SECTIONS)}.")
    head = _table(spec, "study", file)
    bad = sorted(set(head) - set(STUDY_KEYS))
    if bad:
        raise CdeitError(f"{file}: [study] has unknown key(s) {', '.join(bad)}; it takes {', '.join(STUDY_KEYS)}.")
    slurm = _check_slurm(_table(spec, "slurm", file), file)
    shared = check_options(_table(spec, "shared", file), "[shared]", file)
    groups = _groups(spec, file)
    seeds = _seeds(head, file)
    _check_size(len(groups), len(seeds), file)
    name = str(head.get("name") or file.stem)
    # absolute: a resumed run must name the same --out as its first start, from whatever directory it runs
    study_dir = Path(out or head.get("out") or file.with_suffix("")).resolve()
    baseline = head.get("baseline")
    if baseline is not None and baseline not in groups:
        raise CdeitError(
            f"{file}: [study] baseline {baseline!r} is not a configuration; choose one of {', '.join(groups)}."
        )
    for where, table in (("[shared]", shared), *((f"configuration {g!r}", o) for g, o in groups.items())):
        _module_given(table.get("teacher_module"), teacher_module, f"{file}: {where}")
    runs = [_plan_run(study_dir, g, o, shared, seed, file) for g, o in groups.items() for seed in seeds]
    return Study(name, study_dir, seeds, shared, groups, runs, baseline, head.get("preset"), slurm)


def _module_given(recorded: Any, given: str | None, where: str) -> None:
    """A study's teacher_module only when --teacher-module gives the same file on this command line."""
    from cdeit.train.core.rundir import module_asked

    module_asked(recorded, given, where)
    if recorded and Path(str(recorded)).expanduser().resolve() != Path(str(given)).expanduser().resolve():
        raise CdeitError(
            f"{where} names teacher_module {str(recorded)[:200]!r}, not the --teacher-module {given} given here; pass "
            "that file, or change the study."
        )


def _plan_run(study_dir: Path, group: str, overrides: dict, shared: dict, seed: int, file: Path) -> PlannedRun:
    """One run's full settings, validated by TrainConfig itself; its name carries a hash of those settings."""
    values = TrainConfig().to_json() | shared | overrides | {"seed": seed, "out": ""}
    for key in ("data", "teacher_cache"):  # jobs may start elsewhere (SLURM): paths absolute, as from here
        if values.get(key):
            values[key] = str(Path(values[key]).resolve())
    digest = settings_hash(values)
    name = f"{group}-s{seed}-{digest}"
    values["out"] = str(study_dir / RUNS / name)
    try:
        TrainConfig.from_mapping(values, f"{file}: configuration {group!r}")
    except CdeitError as exc:
        raise CdeitError(f"{file}: configuration {group!r} (seed {seed}) is invalid: {exc}") from None
    load_manifest(values["data"])  # a missing dataset is refused now, not in the first job's log
    cache = values.get("teacher_cache")
    if cache and not (Path(cache) / "manifest.json").is_file():
        raise CdeitError(
            f"{file}: teacher_cache {cache} holds no manifest.json; build it with `cdeit precompute-teacher`."
        )
    return PlannedRun(group, seed, overrides, values, name)


def spec_text(spec: dict[str, Any]) -> str:
    """A study spec as TOML (tomli-w), for the study.toml of a preset or of a file changed by --set/--seeds."""
    import tomli_w

    return tomli_w.dumps(spec)


def write_plan(study: Study, spec_text: str) -> Path:
    """Write study.toml (what was asked) and plan.json (the expanded runs) into the study folder."""
    study.out.mkdir(parents=True, exist_ok=True)
    with atomic_path(study.out / SPEC) as tmp:
        tmp.write_text(spec_text)
    write_json(study.out / PLAN, study.to_json())
    return study.out / PLAN


PLAN_KEYS = {"runs": list}
RUN_KEYS = {"group": str, "seed": int, "overrides": dict, "settings": dict, "name": str}
RERUN = "rerun `cdeit sweep` on the study file"


def read_plan(study_dir: str | Path) -> dict[str, Any]:
    """STUDY/plan.json, each planned run checked; a missing or mistyped key is one sentence naming it."""
    path = Path(study_dir) / PLAN
    plan = read_json_object(path, str(path), RERUN, PLAN_KEYS)
    from cdeit.train.studies.presets import PRESETS

    if len(plan["runs"]) > MAX_RUNS:
        raise CdeitError(f"{path} plans {len(plan['runs']):,} runs, more than the limit of {MAX_RUNS:,}; {RERUN}.")
    for key in ("baseline", "preset"):
        field(plan, key, (str, type(None)), str(path), RERUN, optional=True)
    if plan.get("preset") is not None and plan["preset"] not in PRESETS:
        raise CdeitError(f"{path} has 'preset' = {plan['preset']!r:.40}, not one of {', '.join(PRESETS)}; {RERUN}.")
    for i, run in enumerate(plan["runs"]):
        if not isinstance(run, dict):
            raise CdeitError(f"{path} runs[{i}] is not a JSON object; {RERUN}.")
        check_keys(run, RUN_KEYS, f"{path} runs[{i}]", RERUN)
        plain_name(run["name"], str(path), f"runs[{i}].name", RERUN)  # a folder of STUDY/runs, never elsewhere
    return plan


def planned_runs(plan: dict[str, Any]) -> list[PlannedRun]:
    """The runs of a plan read by `read_plan`."""
    return [PlannedRun(**{k: r[k] for k in RUN_KEYS}) for r in plan["runs"]]


# ------------------------------------------------------------------------------------------ state
def run_status(run_dir: str | Path) -> Status:
    """Read from the run's files: done (trained and evaluated), trained, partial (killed: a checkpoint) or new."""
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").is_file():
        return "done" if (run_dir / "eval" / f"{EVAL_SPLIT}.json").is_file() else "trained"
    return "partial" if (run_dir / CHECKPOINT).is_file() else "new"


def steps_for(status: Status) -> list[Step]:
    """What a run in this state still needs: nothing, evaluate, or train (resume when killed) then evaluate."""
    return {"done": [], "trained": ["evaluate"], "partial": ["resume", "evaluate"], "new": ["train", "evaluate"]}[
        status
    ]


def changed_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that differ from TrainConfig's defaults (what `--dry-run` shows and a resume checks)."""
    defaults = TrainConfig().to_json()
    return {k: v for k, v in settings.items() if k not in defaults or v != defaults[k]}


def run_config(run: PlannedRun, study_dir: str | Path) -> TrainConfig:
    """The run's TrainConfig, written into its directory of this study folder."""
    return TrainConfig.from_mapping(
        run.settings | {"out": str(run.run_dir(study_dir))}, f"{study_dir}/{PLAN} run {run.name}"
    )


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict | list) or value is None else str(value)


def step_line(step: Step, run: PlannedRun) -> str:
    """One step of a run in words, with its settings beyond the defaults (the run directory is its name)."""
    s = run.settings
    if step == "evaluate":
        return f"evaluate: split={EVAL_SPLIT} device={s['device']} batch_size={s['eval_batch_size']} " \
            f"workers={s['workers']}"  # fmt: skip
    shown = {k: v for k, v in changed_settings(s).items() if k != "out"}
    how = " (from its last checkpoint)" if step == "resume" else ""
    return f"{step}{how}: " + " ".join(f"{k}={_show(v)}" for k, v in shown.items())
