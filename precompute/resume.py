"""The output folder and resume: a rerun continues a cache of the same run and refuses one of another.

`check_out_dir` runs once on rank 0 before any work; `shard_complete` is asked of every shard by both passes
and drops a shard that does not belong to this run (or changed since the manifest was written).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdeit.common.cache import (
    AUGMENTED_DIR,
    FEATURES_DIR,
    HEAD_FILE,
    IDENTITY_KEYS,
    INFO_KEYS,
    MANIFEST,
    ShardSpec,
    build_manifest,
    provenance_conflicts,
    read_cache_manifest,
    read_head_meta,
    sha256_file,
    shard_problem,
    write_manifest,
)
from cdeit.common.console import console
from cdeit.common.errors import CdeitError
from cdeit.common.lock import LOCK_NAME
from cdeit.precompute.head_stage import is_reusable

if TYPE_CHECKING:
    from cdeit.common.head import LinearHead
    from cdeit.precompute.job import PrecomputeJob


def check_out_dir(job: PrecomputeJob, given: LinearHead | None) -> None:
    """Resume silently into a cache of the same run; refuse one of another teacher, data or head."""
    from cdeit.common.atomic import remove_stale_tmp

    path = job.cfg.out
    if path.exists() and not path.is_dir():
        raise CdeitError(f"--out {path} is a file; pass a directory for the cache.")
    path.mkdir(parents=True, exist_ok=True)
    for d in (path, path / FEATURES_DIR, path / AUGMENTED_DIR):
        if d.is_dir():
            remove_stale_tmp(d)
    has_shards = any(path.glob("*.h5")) or any((path / FEATURES_DIR).glob("*.h5"))
    if (path / MANIFEST).is_file() or has_shards:
        existing = read_cache_manifest(path) if (path / MANIFEST).is_file() else build_manifest(path)
        _check_same_run(job, existing, given)
    elif any(p.name != LOCK_NAME for p in path.iterdir()):  # the lock file of this very run does not count
        raise CdeitError(f"--out {path} is not empty and holds no teacher cache; choose a new or empty directory.")
    else:
        write_manifest(path, fallback=job.identity())


def _check_same_run(job: PrecomputeJob, existing: dict[str, Any], given: LinearHead | None) -> None:
    """Refuse, in one sentence, a cache of another provenance, other data or another head than this run's."""
    path, hint = job.cfg.out, "choose another --out, or delete it to start over"
    want = job.identity() | {"store_features": job.store_features}
    for key, have, this in provenance_conflicts(existing["provenance"], want, (*IDENTITY_KEYS, "store_features")):
        if key == "store_features":
            raise CdeitError(f"{path} holds a cache with store_features={have}; {hint} or match it.")
        if key == "view":
            raise CdeitError(f"{path} holds a {have}-view cache, but this run has --view {this}; {hint}.")
        if key == "targets":
            raise CdeitError(f"{path} holds a cache with per-patch targets {','.join(have) or 'none'}, "
                             f"not {','.join(this) or 'none'}; {hint} or pass the same --targets.")  # fmt: skip
        raise CdeitError(f"{path} holds a cache with {key} {have!r}, but this run has {this!r}; {hint}.")
    for split in job.cache_splits:
        cached = existing["splits"].get(split, {}).get("fingerprint")
        if cached and cached != job.split_entry(split)["fingerprint"]:
            raise CdeitError(
                f"{path} was computed for other data (split {split} fingerprint {cached[:19]}...); {hint}."
            )
    _check_same_head(job, given, hint)


def _check_same_head(job: PrecomputeJob, given: LinearHead | None, hint: str) -> None:
    """The cache's head must be the one passed with --head, or (without --head) one this run would fit."""
    path, meta = job.cfg.out, read_head_meta(job.cfg.out)
    if meta is None:
        return
    if given is not None and meta["hash"] != given.hash:
        raise CdeitError(f"{path} holds logits of head {meta['hash'][:19]}..., not of the head you passed; {hint}.")
    if given is None and not is_reusable(meta, job):
        raise CdeitError(
            f"{path} holds a {meta.get('source', 'given')} head with other settings than this run's fit; "
            f"pass --head {path / HEAD_FILE} to resume with it, or {hint}."
        )


def manifest_sums(path: Path) -> dict[str, str]:
    """file -> sha256 of every shard the manifest found at start lists (empty without a readable manifest)."""
    try:
        manifest = read_cache_manifest(path)
    except CdeitError:
        return {}
    listed = manifest["shards"] + manifest["feature_shards"] + manifest.get("augmented_shards", [])
    return {e["file"]: e["sha256"] for e in listed}


def shard_complete(job: PrecomputeJob, spec: ShardSpec, kind: str, head: LinearHead | None = None) -> bool:
    """Whether the shard exists, matches this run and its manifest checksum; removes it when it does not."""
    path = spec.path(job.cfg.out, kind)
    if not path.is_file():
        return False
    expect = {k: v for k, v in job.shard_attrs(spec, kind, head).items() if k not in INFO_KEYS}
    problem = shard_problem(path, spec, kind, expect)
    rel = path.relative_to(job.cfg.out).as_posix()
    if problem is None and rel in job.sums and sha256_file(path) != job.sums[rel]:
        problem = f"{rel} changed since the manifest was written"
    if problem:
        console.print(f"[yellow]recomputing {rel}: {problem}.[/]")
        path.unlink()
    return problem is None
