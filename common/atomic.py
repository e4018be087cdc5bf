"""Write files under a temporary name and rename them when complete, so nothing half-written looks finished."""

from __future__ import annotations

import contextlib
import json
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
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def remove_stale_tmp(directory: str | os.PathLike) -> None:
    """Delete temporary files left by a killed run (any `.NAME.tmp-PID`)."""
    for p in Path(directory).glob(".*.tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
