"""The run directory: what a run records about itself and what a resume checks against it.

RUN/config.json holds every setting (absolute paths), RUN/environment.json the versions, the device, the git
commit and the identity of the data and the teacher cache (split fingerprints, a hash of the cache's shard
checksums). A resume compares those identities, not path strings, so a moved run, dataset or cache still
resumes and a dataset rebuilt in place with another seed is refused. metrics.jsonl is appended one line per
epoch, before the checkpoint, so no kill loses a line; a truncated last line is dropped on resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from cdeit.common.atomic import (
    atomic_path,
    json_safe,
    read_json_object,
    real_folder,
    remove_stale_tmp,
    write_json,
)
from cdeit.common.errors import CdeitError
from cdeit.train.core.config import TrainConfig

CONFIG = "config.json"
ENVIRONMENT = "environment.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoints/last.pt"
# settings a resume may change: they do not alter what is trained (paths are compared by identity instead)
RESUME_FREE = ("workers", "eval_every", "eval_batch_size", "device", "log_wandb")
# settings a resume may change because they extend the run: the schedule is recomputed (docs/training.md)
RESUME_EXTENDS = ("epochs",)
# paths stored absolute, and compared on resume by what they hold (the online teacher's files: by the cache's hashes)
PATH_FIELDS = ("data", "teacher_cache", "out", "teacher_checkpoint", "teacher_module")
VERSIONED = ("cdeit", "torch", "timm", "ffcv", "numpy")


def io_error(path: Path, exc: OSError) -> CdeitError:
    import errno

    if exc.errno == errno.ENOSPC:
        return CdeitError(f"the disk is full while writing {path}; free space and rerun with --resume RUN.")
    return CdeitError(f"cannot write {path} ({exc.strerror or exc}); choose a writable --out.")


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """The same settings with data, teacher cache, run directory and the online teacher's files as absolute paths
    (a --teacher-module given as a dotted module name stays a name)."""
    resolved = {
        k: str(Path(v).expanduser().resolve())
        for k in PATH_FIELDS
        if (v := getattr(cfg, k)) and (k != "teacher_module" or Path(v).expanduser().is_file())
    }
    if cfg.initial_checkpoint:  # recorded absolute, but compared on resume as typed (it does not travel with a run)
        resolved["initial_checkpoint"] = str(Path(cfg.initial_checkpoint).expanduser().resolve())
    return dataclasses.replace(cfg, **resolved)


# ------------------------------------------------------------------------------------------ identities
def data_identity(data: str | Path) -> dict[str, str]:
    """Fingerprint of every split in the dataset's manifest: {split: fingerprint}."""
    from cdeit.common.dataset import load_manifest

    return {name: info["fingerprint"] for name, info in load_manifest(data)["splits"].items()}


def cache_identity(cache: str | Path) -> str:
    """sha256 over the cache's logit shards (file name and checksum), its head and, for a K-view cache, its view
    shards: its content, not its path (a plain cache's identity is what it was before K-view caches existed)."""
    from cdeit.common.cache import read_cache_manifest

    manifest = read_cache_manifest(cache)
    shards = sorted((e["file"], e["sha256"]) for e in manifest.get("shards", []))
    head = (manifest.get("head") or {}).get("hash")
    content: dict[str, Any] = {"shards": shards, "head": head}
    if manifest.get("augmented_shards"):  # the views a run replays are part of what it trained on
        content["augmented_shards"] = sorted((e["file"], e["sha256"]) for e in manifest["augmented_shards"])
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def _git_commit() -> str | None:
    """The project's git commit (with '-dirty' for uncommitted changes), or None outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "") if commit else None


def _versions() -> dict[str, str | None]:
    """Each package's full version string: the module's own `__version__` where it has one (torch's
    "2.4.1+cu124" names the build; the distribution metadata says only "2.4.1"), else the metadata's."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            out[name] = str(getattr(importlib.import_module(name), "__version__", None) or version(name))
        except (ImportError, PackageNotFoundError):
            out[name] = None
    return out


def device_name(device: Any) -> str:
    """The accelerator's name (CUDA) or the CPU's."""
    import platform

    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def environment(cfg: TrainConfig, device: Any, world: int, from_cache: bool = True) -> dict[str, Any]:
    """What this process trains with: versions, commit, device, and the identity of the data and the cache
    (`from_cache` False: the teacher is a TeacherSource given to the Trainer, and cfg.teacher_cache only a label)."""
    import platform

    env: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": _versions() | {"python": platform.python_version()},
        "git_commit": _git_commit(),
        "device": str(device),
        "device_name": device_name(device),
        "world_size": world,
        "precision": cfg.precision,
        "data": {"path": cfg.data, "fingerprints": data_identity(cfg.data)},
    }
    if cfg.teacher_cache and from_cache:
        env["teacher_cache"] = {"path": cfg.teacher_cache, "identity": cache_identity(cfg.teacher_cache)}
    if cfg.initial_checkpoint and Path(cfg.initial_checkpoint).exists():  # the weights it started from, by content
        from cdeit.train.core.weights import sha256_file, weights_file

        file = weights_file(cfg.initial_checkpoint, "last", "--initial-checkpoint", "--initial-checkpoint")
        env["initial_checkpoint"] = {"path": str(file), "sha256": sha256_file(file)}
    return env


# ------------------------------------------------------------------------------------------ set-up and resume
def folder_kind(folder: Path) -> str | None:
    """What cdeit wrote `folder` as, by its files: "a dataset", "a teacher cache", "a study", "a run", or None."""
    if (folder / "manifest.json").is_file():
        if any(folder.glob("*.beton")):
            return "a dataset"
        return "a teacher cache" if any(folder.glob("*.h5")) else "a dataset or teacher cache"
    if (folder / "plan.json").is_file():
        return "a study"
    if (folder / CONFIG).is_file() and ((folder / "checkpoints").is_dir() or (folder / "model.safetensors").exists()):
        return "a run"
    return None


def check_run_out(out: str | Path, option: str = "--out") -> Path:
    """Refuse a run directory that is a dataset, a cache or a study, or whose own folders are symlinks (a run writes
    into its own folders only), before anything is written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CdeitError(f"{option} {out} is a file, not a folder; choose a new folder for the run.")
    kind = folder_kind(out) if out.is_dir() else None
    if kind not in (None, "a run"):
        raise CdeitError(f"{option} {out} is {kind}, not a run directory; choose a new folder for the run.")
    for sub in ("checkpoints", "tb"):
        real_folder(out / sub, out, option)
    return out


def prepare_run_dir(cfg: TrainConfig, resume: bool) -> Path:
    """Create RUN/, refuse to overwrite another run, and prove it is writable before any work."""
    out = check_run_out(cfg.out)
    try:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise io_error(out, exc) from None
    remove_stale_tmp(out, recursive=True)  # a killed run's half-written checkpoint or model (dead PIDs only)
    saved = out / CONFIG
    has_run = (out / CHECKPOINT).is_file() or (out / "model.safetensors").is_file()
    if saved.is_file() and not resume and has_run:
        raise CdeitError(f"{out} already holds a run; pass --resume {out} to continue it or choose another --out.")
    if resume and saved.is_file():
        old = TrainConfig().to_json() | TrainConfig.read_json(saved, f"--resume {out}: {saved}")  # new: defaults
        ignore = (*RESUME_FREE, *RESUME_EXTENDS, *PATH_FIELDS)
        differs = [k for k, v in cfg.to_json().items() if k not in ignore and old.get(k) != v]
        if differs:
            raise CdeitError(f"--resume with other settings than {saved} ({', '.join(differs)}); use the same options.")
    return out


def check_identity(out: Path, env: dict[str, Any]) -> None:
    """Refuse a resume whose dataset or teacher cache is not the one the run started with (by content)."""
    path = out / ENVIRONMENT
    if not path.is_file():
        return  # a run from before environment.json: nothing recorded to compare
    started = _read_json(path).get("started", {})
    want, have = started.get("data", {}).get("fingerprints"), env["data"]["fingerprints"]
    if want is not None and want != have:
        split = next((s for s in sorted({*want, *have}) if want.get(s) != have.get(s)), "?")
        raise CdeitError(
            f"--resume {out}: the dataset {env['data']['path']} is not the one the run trained on (split {split} "
            f"has fingerprint {have.get(split)}, the run recorded {want.get(split)}); give the run's --data."
        )
    want_cache = (started.get("teacher_cache") or {}).get("identity")
    have_cache = (env.get("teacher_cache") or {}).get("identity")
    if want_cache != have_cache:
        raise CdeitError(
            f"--resume {out}: the teacher cache {(env.get('teacher_cache') or {}).get('path')} is not the one the "
            f"run trained with (identity {have_cache}, the run recorded {want_cache}); give the run's --teacher-cache."
        )


def record_environment(out: Path, env: dict[str, Any], resumed: bool) -> None:
    """RUN/environment.json: the environment the run started in, then one entry per resume."""
    path = out / ENVIRONMENT
    record = _read_json(path) if resumed and path.is_file() else {}
    if "started" in record:
        record.setdefault("resumed", []).append(env)
    else:
        record = {"started": env, "resumed": []}
    write_json(path, record)


def resume_config(run: str | Path, given: dict[str, Any]) -> TrainConfig:
    """The settings of `cdeit train --resume RUN`: RUN/config.json, with RUN as the run directory.

    `given` holds the options typed on the command line: each must agree with the run, except those a resume
    may change (RESUME_FREE), --epochs (RESUME_EXTENDS: the schedule is recomputed from the resumed step) and the
    data and cache paths (their content is compared when training starts).
    """
    run = Path(run).expanduser().resolve()
    path = run / CONFIG
    if not path.is_file():
        raise CdeitError(f"--resume {run}: {path} is missing, so it is not a cdeit run; give a run directory.")
    saved = TrainConfig().to_json() | TrainConfig.read_json(path, f"--resume {run}: {path}")  # new fields: defaults
    if "out" in given and Path(given["out"]).expanduser().resolve() != run:
        raise CdeitError(f"--resume {run} with --out {given['out']}: a resume writes into RUN; drop --out.")
    free_keys = (*RESUME_FREE, *RESUME_EXTENDS, *PATH_FIELDS)
    clash = [k for k in saved if k in given and k not in free_keys and saved[k] != given[k]]
    if clash:
        listed = ", ".join(f"--{k.replace('_', '-')} {given[k]} (run: {saved.get(k)})" for k in clash)
        raise CdeitError(f"--resume {run} was trained with other settings: {listed}; drop them to continue the run.")
    free = {k: v for k, v in given.items() if k in free_keys and k != "out"}
    module_asked(saved.get("teacher_module"), given.get("teacher_module"), f"--resume {run}: {path}")
    return TrainConfig.from_mapping(saved | free | {"out": str(run)}, f"--resume {run}")


def module_asked(recorded: Any, given: Any, where: str) -> None:
    """A `teacher_module` a file records is imported only when this command line gives it too (`--teacher-module`):
    a file never chooses code to run (docs/reliability.md); one sentence asking for it otherwise."""
    if recorded and not given:
        raise CdeitError(
            f"{where} records teacher_module {str(recorded)[:200]!r}, which cdeit imports only when given on the "
            f"command line; check that file and pass --teacher-module {str(recorded)[:200]} to use it."
        )


def extend_schedule(scheduler: Any, state: Any, old_epochs: int, cfg: TrainConfig) -> dict[str, Any]:
    """`--resume RUN --epochs N`: set the new total's schedule (`scheduler`, built for cfg.epochs) to the resumed
    step; returns what environment.json's resumed entry records. Fewer epochs than already trained are refused."""
    if cfg.epochs < state.epoch:
        raise CdeitError(
            f"--resume {cfg.out} --epochs {cfg.epochs}: the run has already trained {state.epoch} epochs; give at "
            f"least {state.epoch}."
        )
    scheduler.step_update(state.step)  # the lr of the next step, on the new total's curve
    return {"epochs": {"from": old_epochs, "to": cfg.epochs}, "at_epoch": state.epoch, "at_step": state.step}


RUN_CONFIG_KEYS = {"data": str, "student": str, "distill": str}  # what every reader of a run needs


def read_run_config(run: str | Path, keys: dict[str, Any] | None = None) -> dict[str, Any]:
    """RUN/config.json as the run recorded it, every key of `keys` (by default RUN_CONFIG_KEYS) present and every
    key of TrainConfig's name and type (TrainConfig.check_mapping): one sentence naming the file and the key."""
    path = Path(run) / CONFIG
    if not path.is_file():
        raise CdeitError(f"{run} is not a cdeit run (no {CONFIG}); give a directory written by `cdeit train`.")
    raw = read_json_object(path, str(path), "restore it or retrain the run", keys or RUN_CONFIG_KEYS)
    return TrainConfig.check_mapping(raw, str(path))


def _read_json(path: Path) -> dict[str, Any]:
    return read_json_object(path, str(path), "restore it or start a new run")


# ------------------------------------------------------------------------------------------ metrics.jsonl
def append_metrics(out: Path, record: dict[str, Any]) -> None:
    """Append one epoch's line (non-finite numbers as null: NaN is not JSON)."""
    path = out / METRICS
    try:
        with open(path, "a") as fh:
            fh.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
            fh.flush()
    except OSError as exc:
        raise io_error(path, exc) from None


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """Every line of RUN/metrics.jsonl; a damaged line is one sentence naming it."""
    path = out / METRICS
    if not path.is_file():
        return []
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise CdeitError(f"{path} line {i} is not valid JSON; resume the run to repair it.") from None
    return records


def repair_metrics(out: Path, epoch: int, last: dict[str, Any] | None) -> str | None:
    """After a resume: keep the lines of epochs <= `epoch`, drop a truncated last line, restore the checkpoint's.

    `last` is the line of epoch `epoch` as the checkpoint holds it (written back if the file lacks it).
    Returns a sentence saying what was repaired, or None. A damaged line before the last is refused.
    """
    path = out / METRICS
    lines = path.read_text().splitlines() if path.is_file() else []
    kept, note = [], None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i < len(lines):
                raise CdeitError(
                    f"{path} line {i} of {len(lines)} is not valid JSON; fix or delete that line and resume again."
                ) from None
            note = f"dropped a truncated last line of {path} (epoch {epoch + 1} is redone)"
            continue
        if record.get("epoch", 0) <= epoch:
            kept.append(record)
    if last is not None and not any(r.get("epoch") == epoch for r in kept):
        kept.append(last)
        note = f"restored the line of epoch {epoch} in {path} from the checkpoint"
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in kept))
    return note
