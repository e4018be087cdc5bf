"""What a precompute adds to the manifest beyond what the shards say: `calibration` and `throughput`.

The manifest is rebuilt from the shards present (store.build_manifest), so these records are carried from the
manifest found on disk into each rebuilt one: a resumed run that computed nothing keeps the figures of the run that
did. A calibration belongs to one head: it is dropped when the cache's head changes. manifest.check_records checks
them when the manifest is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cdeit.common.cache.format import MANIFEST
from cdeit.common.errors import CdeitError


def previous_records(cache_dir: Path) -> dict[str, Any]:
    """The calibration and throughput of the manifest on disk ({} without a readable one)."""
    from cdeit.common.cache.manifest import read_cache_manifest

    if not (cache_dir / MANIFEST).is_file():
        return {}
    try:
        manifest = read_cache_manifest(cache_dir)
    except CdeitError:  # an unreadable manifest is rebuilt from the shards; its records are lost with it
        return {}
    return {k: manifest[k] for k in ("calibration", "throughput") if manifest.get(k)}


def merged_records(
    cache_dir: Path, head: Mapping[str, Any] | None, new: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """`calibration` and `throughput` for the manifest: `new` over the previous manifest's, per pass for the
    throughput; a calibration of another head than `head` is dropped."""
    old, new = previous_records(cache_dir), dict(new or {})
    throughput = {**(old.get("throughput") or {}), **(new.get("throughput") or {})}
    calibration = new.get("calibration") or old.get("calibration")
    head_hash = head.get("hash") if head else None
    if calibration and calibration.get("head_hash") != head_hash:
        calibration = None
    return {"calibration": calibration, "throughput": throughput}
