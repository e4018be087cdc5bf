"""Write files under a temporary name and rename them when complete, so nothing half-written looks finished;
read back the JSON manifests written so, with one sentence for each way a directory is not what it claims."""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def tmp_name(final: Path) -> Path:
    """The temporary sibling of `final` (same directory, so the rename is atomic)."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path; on success fsync and rename it to `final`, on failure remove it."""
    final = Path(final)
    tmp = tmp_name(final)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create 0600: give the user's permissions
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
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


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON atomically; non-finite numbers become null (never NaN)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def remove_stale_tmp(directory: str | os.PathLike) -> None:
    """Delete temporary files left by a killed run (any `.NAME.tmp-PID`)."""
    for p in Path(directory).glob(".*.tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def read_manifest_json(directory: str | os.PathLike, what: str, command: str) -> tuple[Path, Any]:
    """DIRECTORY/manifest.json parsed, and its path; a missing directory or file, or invalid JSON, is a `CdeitError`
    naming it. `what` says what the directory should be ("a teacher cache"), `command` what builds one."""
    from cdeit.common.errors import CdeitError

    directory = Path(directory)
    path = directory / "manifest.json"
    if not directory.is_dir():
        raise CdeitError(f"{what} {directory} does not exist; build one with `{command}`.")
    if not path.is_file():
        raise CdeitError(f"{path} is missing, so {directory} is not {what}; build one with `{command}`.")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CdeitError(f"{path} is not valid JSON ({exc}); rerun `{command}` to rebuild it.") from None
    if not isinstance(manifest, dict):
        raise CdeitError(f"{path} is not the manifest of {what}; pass a directory made by `{command}`.")
    return path, manifest
