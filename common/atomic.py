"""Write files under a temporary name and rename them when complete, so nothing half-written looks finished;
read back the JSON manifests written so, with one sentence for each way a directory is not what it claims."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cdeit.common.errors import CdeitError


def tmp_name(final: Path) -> Path:
    """The temporary sibling of `final` (same directory, so the rename is atomic)."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, rerun: str = "rerun") -> Iterator[Path]:
    """Yield a temporary path; on success fsync and rename it to `final`, on failure remove it."""
    final = Path(final)
    tmp = tmp_name(final)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create 0600: give the user's permissions
        _test_kill("before", final)
        os.replace(tmp, final)
        _test_kill("after", final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if _is_write_failure(exc, final):
            raise write_error(final, exc, rerun) from None
        raise


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def json_safe(obj: Any) -> Any:
    """`obj` with every NaN or infinity replaced by None: NaN is not JSON, null says "undefined"."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


# The product's test hooks (CDEIT_TEST_*) are read only when CDEIT_TESTING=1, which tests/conftest.py sets: outside
# the test suite they do nothing, whatever the environment says; under it a bad value is a sentence.
TESTING_ENV = "CDEIT_TESTING"
KILL_ENV = "CDEIT_TEST_KILL"  # tests only: "before:GLOB[#N]" or "after:GLOB[#N]", SIGKILL at the N-th such rename
_kill_seen: dict[str, int] = {}


def testing() -> bool:
    """Whether the test suite runs this process (CDEIT_TESTING=1): the only case the test hooks are read."""
    return os.environ.get(TESTING_ENV) == "1"


def test_seconds(env: str) -> float:
    """The seconds a test hook `env` asks to wait (0 outside the test suite); a bad value is one sentence."""
    if not testing():
        return 0.0
    text = os.environ.get(env, "").strip() or "0"
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise CdeitError(f"test hook {env}={text!r} is not a number of seconds in 0..3600; fix or unset it.")
    return value


def _test_kill(when: str, final: Path) -> None:
    """kill -9 this process just before or after the N-th file matching GLOB is renamed (the kill tests' hook)."""
    spec = os.environ.get(KILL_ENV) if testing() else None
    if not spec:
        return
    import fnmatch
    import signal

    at, _, rest = spec.partition(":")
    pattern, _, nth = rest.partition("#")
    if at not in ("before", "after") or not pattern or not (nth or "1").isdigit() or int(nth or 1) < 1:
        raise CdeitError(f"test hook {KILL_ENV}={spec!r} is not before:GLOB[#N] or after:GLOB[#N]; fix or unset it.")
    if at == when and fnmatch.fnmatch(final.name, pattern):
        _kill_seen[spec] = _kill_seen.get(spec, 0) + 1
        if _kill_seen[spec] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)


def _is_write_failure(exc: BaseException, final: Path) -> bool:
    """OSError, and what torch.save (RuntimeError 'file write failed') and safetensors raise when a write fails."""
    if isinstance(exc, OSError):
        return True
    if type(exc).__name__ == "SafetensorError":
        return True
    if not isinstance(exc, RuntimeError) or type(exc).__module__.startswith(("typer", "click")):
        return False
    text = str(exc).lower()
    words = ("write", "disk", "space", "errno", "iostream", "unexpected pos", "file")
    return any(w in text for w in words) or _nearly_full(final.parent)


def _nearly_full(final_dir: Path, margin: int = 64 << 20) -> bool:
    """Whether the file system of `final_dir` has less than `margin` bytes free."""
    try:
        return shutil.disk_usage(final_dir).free < margin
    except OSError:
        return False


def write_error(path: str | os.PathLike, exc: BaseException, rerun: str = "rerun") -> CdeitError:
    """One sentence naming `path` for a failed write (full disk, read-only folder, ...)."""
    if isinstance(exc, OSError):
        from cdeit.common.console import os_error_sentence

        return CdeitError(os_error_sentence(exc, path, rerun))
    if _nearly_full(Path(path).parent):  # torch and safetensors do not keep the errno: a full disk is the usual reason
        return CdeitError(f"the disk is full while writing {path}; free space and {rerun}.")
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return CdeitError(
        f"cannot write {path} ({lines[0][:160]}); check the disk and the folder's permissions, then {rerun}."
    )


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON atomically; non-finite numbers become null (never NaN)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def remove_stale_tmp(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete temporary files left by killed runs (`.NAME.tmp-PID` whose PID is gone); returns what it removed.

    A file whose PID is still alive (this process, or another one writing there) is never touched.
    """
    removed = []
    for p in Path(directory).glob("**/.*.tmp-*" if recursive else ".*.tmp-*"):
        pid = p.name.rpartition(".tmp-")[2]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink() if not p.is_dir() else shutil.rmtree(p)
            removed.append(p)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


NUMBER = (int, float)  # a JSON number: 1 and 1.0 alike (a bool is refused wherever it is not asked for)
Kind = type | tuple[type, ...]


def read_json_object(
    path: str | os.PathLike, name: str, fix: str, keys: Mapping[str, Kind] | None = None
) -> dict[str, Any]:
    """A JSON file that must hold an object with `keys` (name -> type) at least; a missing, unreadable or invalid
    file, a non-object or a missing or mistyped key is one sentence naming `name` (and the key), then FIX."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CdeitError(f"{name} is missing; {fix}.") from None
    except RecursionError:
        raise CdeitError(f"{name} is nested too deeply to be a cdeit file; {fix}.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CdeitError(f"{name} could not be read ({exc}); {fix}.") from None
    if not isinstance(value, dict):
        raise CdeitError(f"{name} is not a JSON object; {fix}.")
    return check_keys(value, keys or {}, name, fix)


def check_keys(obj: dict[str, Any], keys: Mapping[str, Kind], name: str, fix: str) -> dict[str, Any]:
    """`obj` itself if it holds every key of `keys` with a value of its type; else one sentence naming the key."""
    for key, kind in keys.items():
        if key not in obj:
            raise CdeitError(f"{name} has no {key!r}; {fix}.")
        kinds = kind if isinstance(kind, tuple) else (kind,)
        value = obj[key]
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise CdeitError(f"{name} has {key!r} = {_short(value)}, which should be {_kind_name(kinds)}; {fix}.")
    return obj


def field(
    obj: Mapping[str, Any],
    key: str,
    kind: Kind,
    name: str,
    fix: str,
    *,
    at: str = "",
    minimum: float | None = None,
    optional: bool = False,
) -> Any:
    """`obj[key]` when present with a value of `kind` (at least `minimum`); else one sentence naming file `name` and
    the key (`at` prefixes its path inside the file, e.g. "splits.train."). An `optional` key may be absent (None)."""
    label = f"{at}{key}"
    if key not in obj:
        if optional:
            return None
        raise CdeitError(f"{name} has no {label!r}; {fix}.")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise CdeitError(f"{name} has {label!r} = {_short(value)}, which should be {_kind_name(kinds)}; {fix}.")
    if minimum is not None and isinstance(value, NUMBER) and not (math.isfinite(value) and value >= minimum):
        raise CdeitError(f"{name} has {label!r} = {_short(value)}, which should be at least {minimum:g}; {fix}.")
    return value


def string_list(obj: Mapping[str, Any], key: str, name: str, fix: str, *, at: str = "", optional: bool = False) -> Any:
    """`obj[key]` when it is a list of strings (see `field`)."""
    value = field(obj, key, list, name, fix, at=at, optional=optional)
    if value is not None and not all(isinstance(v, str) for v in value):
        raise CdeitError(f"{name} has {at}{key!r} = {_short(value)}, which should be a list of strings; {fix}.")
    return value


def plain_name(value: str, name: str, label: str, fix: str, suffix: str = "") -> str:
    """`value` when it is a plain file name (no folder, no `..`, ending in `suffix`); else one sentence naming
    file `name` and its key `label`. What a file lists is looked up inside the file's own folder only."""
    separators = ("/", "\\", "\0")
    if not value or value in (".", "..") or any(c in value for c in separators) or not value.endswith(suffix):
        raise CdeitError(
            f"{name} has {label!r} = {_short(value)}, which is not a plain{' ' + suffix if suffix else ''} file name "
            f"inside its folder; {fix}."
        )
    return value


def inside(folder: Path, path: Path, name: str, label: str, fix: str) -> Path:
    """`path` when it (after symlinks) lies inside `folder` (after symlinks); else one sentence naming `name`."""
    try:
        path.resolve().relative_to(folder.resolve())
    except (ValueError, OSError, RuntimeError):
        raise CdeitError(f"{name} lists {label} {path.name}, which leads outside {folder}; {fix}.") from None
    return path


def real_folder(folder: str | os.PathLike, top: str | os.PathLike, label: str) -> Path:
    """`folder` when neither it nor a folder between it and `top` (an output's root) is a symlink or a file: what a
    command writes stays in its own folders, never in another run's through a link; one sentence naming `label`."""
    folder, top = Path(folder), Path(top)
    where = folder
    while where != top and where != where.parent:
        if where.is_symlink() or (where.exists() and not where.is_dir()):
            what = "a symlink" if where.is_symlink() else "not a folder"
            raise CdeitError(f"{label}: {where} is {what}; outputs go into real folders of their own, remove it.")
        where = where.parent
    return folder


def real_file(path: str | os.PathLike, label: str) -> Path:
    """`path` when it is absent or a plain file (an output is replaced only when it is a file, never a symlink
    leading elsewhere, a pipe or a device); one sentence naming `label` else."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        what = "a symlink" if path.is_symlink() else "not a plain file"
        raise CdeitError(f"{label}: {path} is {what}; remove it, cdeit replaces only its own files.")
    return path


def _short(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _kind_name(kinds: tuple[type, ...]) -> str:
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
             list: "a list", type(None): "null"}  # fmt: skip
    named = [words.get(k, k.__name__) for k in kinds if not (k is int and float in kinds)]
    return " or ".join(named)


def read_manifest_json(directory: str | os.PathLike, what: str, command: str) -> tuple[Path, dict[str, Any]]:
    """DIRECTORY/manifest.json parsed (by read_json_object, the one JSON reader), and its path; a missing directory
    or file, or a file that is not a JSON object, is a `CdeitError` naming it. `what` says what the directory should
    be ("a teacher cache"), `command` what builds one."""
    directory = Path(directory)
    path = directory / "manifest.json"
    if not directory.is_dir():
        raise CdeitError(f"{what} {directory} does not exist; build one with `{command}`.")
    if not path.is_file():
        raise CdeitError(f"{path} is missing, so {directory} is not {what}; build one with `{command}`.")
    return path, read_json_object(path, str(path), f"rerun `{command}` to rebuild it, or pass {what} it made")


def probe_writable(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed and prove a file can be written in it, before any work; one sentence if not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CdeitError(f"{folder} is a file, not a folder; choose a folder for the output.")
    probe = folder / f".write-probe.tmp-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise write_error(folder, exc) from None
    return folder


def check_free_space(folder: str | os.PathLike, need: int, what: str) -> None:
    """Refuse, in one sentence, work whose output (`need` bytes) does not fit the free space where `folder` goes."""
    where = Path(folder)
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        raise CdeitError(
            f"{what} needs about {need / 2**20:,.1f} MiB but only {free / 2**20:,.1f} MiB are free on {where}; "
            "free space or choose another output."
        )


def write_safetensors(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str]) -> Path:
    """safetensors' `save_file`, atomically, with the metadata in sorted key order and the user's file mode.

    safetensors keeps the metadata in a hash map, so two saves of the same tensors and metadata order its keys
    differently and the files differ. The header is rewritten in place with sorted keys (same length: only the
    order changes), which makes identical inputs give identical bytes.
    """
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        _sort_header(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates files readable by their owner only
    return path


def _sort_header(path: Path) -> None:
    with open(path, "r+b") as fh:
        size = int.from_bytes(fh.read(8), "little")
        raw = fh.read(size)
        header = json.loads(raw)
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        new = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(new) > size:  # never: reordering keeps the length; leave the file as safetensors wrote it
            return
        fh.seek(8)
        fh.write(new + b" " * (size - len(new)))  # safetensors pads its header with spaces too
