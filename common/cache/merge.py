"""`cdeit cache merge`: join caches (slices computed on different machines) into one, refusing to mix runs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cdeit.common.cache.format import AUGMENTED_DIR, FEATURES_DIR, HEAD_FILE, MANIFEST, provenance_conflicts
from cdeit.common.cache.manifest import check_shard_attrs
from cdeit.common.cache.store import read_attrs, read_cache_manifest, sha256_file, write_manifest
from cdeit.common.errors import CdeitError


def merge_caches(sources: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict[str, Any]:
    """Join caches (slices computed on different machines) into `out`, refusing to mix runs; returns the manifest."""
    from cdeit.common.atomic import remove_stale_tmp

    out = Path(out)
    paths = [Path(s) for s in sources]
    if any(p.resolve() == out.resolve() for p in paths):
        raise CdeitError(f"--out {out} is also one of the caches to merge; write the merged cache to a new directory.")
    manifests = [read_cache_manifest(p) for p in paths]
    check_merge_out(out)
    if (out / MANIFEST).is_file():
        paths, manifests = [*paths, out], [*manifests, read_cache_manifest(out)]
    _check_joinable(paths, manifests)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(out)
    created: list[Path] = []  # what this merge wrote: removed again if a source turns out damaged
    try:
        _copy_sources(paths, manifests, out, created)
    except BaseException:
        for p in reversed(created):
            p.unlink(missing_ok=True)
            if p.parent != out and p.parent.is_dir() and not any(p.parent.iterdir()):
                p.parent.rmdir()
        raise
    with_logits = {e["file"] for m in manifests for e in m["shards"]}
    for entry in (e for m in manifests for e in m["feature_shards"]):
        if Path(entry["file"]).name in with_logits:  # features whose logits exist are no longer needed
            (out / entry["file"]).unlink(missing_ok=True)
    return write_manifest(out, records=merged_figures(manifests))


def merged_figures(manifests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The merged cache's records from its parts: each pass's throughput summed over the parts that measured it
    (images and seconds add up; images/s is their ratio, the devices are named together when they differ), and the
    calibration of the part that fitted one on the most val images (all parts share one head)."""
    throughput: dict[str, dict[str, Any]] = {}
    for manifest in manifests:
        for name, part in (manifest.get("throughput") or {}).items():
            total = throughput.setdefault(name, {**part, "images": 0, "seconds": 0.0})
            total["images"] += part["images"]
            total["seconds"] += part["seconds"]
            for key in ("device", "device_name", "compute_dtype"):
                if part[key] not in total[key].split(" + "):
                    total[key] += f" + {part[key]}"
    for total in throughput.values():
        total["images_per_s"] = total["images"] / total["seconds"]
    fitted = [m["calibration"] for m in manifests if m.get("calibration")]
    calibration = max(fitted, key=lambda c: c["count"]) if fitted else None
    return {"throughput": throughput, "calibration": calibration}


# what a cache folder may hold besides its manifest: shards, the head, the two shard folders, the output lock
CACHE_ENTRIES = (HEAD_FILE, FEATURES_DIR, AUGMENTED_DIR, ".cdeit.lock")


def check_merge_out(out: Path) -> None:
    """Refuse an --out that is a folder of another kind (a run, a dataset, anything but a cache or an empty folder),
    before anything is written into it."""
    if not out.is_dir():
        return
    if (out / MANIFEST).is_file():
        read_cache_manifest(out)  # a teacher cache, or one sentence saying what else it is
        return
    foreign = sorted(
        p.name for p in out.iterdir()
        if p.name not in CACHE_ENTRIES and not p.name.endswith(".h5") and ".tmp-" not in p.name
    )  # fmt: skip
    if foreign:
        raise CdeitError(
            f"--out {out} is not a teacher cache (it holds {foreign[0]}); merge into a new folder or into a cache."
        )


def _copy_sources(
    paths: Sequence[Path], manifests: Sequence[Mapping[str, Any]], out: Path, created: list[Path]
) -> None:
    """Copy every source's shards (checksums verified) and the head into `out`, noting each file it creates."""
    with_logits = {e["file"] for m in manifests for e in m["shards"]}
    for path, manifest in zip(paths, manifests, strict=True):
        if path == out:
            continue
        for entry in manifest["shards"] + manifest.get("augmented_shards", []):
            _copy_verified(path, out, entry, created)
        for entry in manifest["feature_shards"]:
            if Path(entry["file"]).name not in with_logits:  # features are needed only where logits are missing
                _copy_verified(path, out, entry, created)
        if (path / HEAD_FILE).is_file() and not (out / HEAD_FILE).is_file():
            _copy_file(path / HEAD_FILE, out / HEAD_FILE)
            created.append(out / HEAD_FILE)


def _check_joinable(paths: Sequence[Path], manifests: Sequence[Mapping[str, Any]]) -> None:
    """Refuse, in one sentence, caches of other runs: provenance, data fingerprints or heads that differ."""
    first_path, first = paths[0], manifests[0]
    for path, m in zip(paths[1:], manifests[1:], strict=True):
        for key, a, b in provenance_conflicts(first["provenance"], m["provenance"]):
            if key in ("views", "augmentation"):
                raise CdeitError(
                    f"{first_path} and {path} differ in their augmented views ({key}: {a} vs {b}); cannot mix them "
                    "in one cache: compute every slice with the same --views, augmentation settings and --seed."
                )
            if key in ("view", "targets"):
                what = "view" if key == "view" else "per-patch targets"
                raise CdeitError(
                    f"{first_path} and {path} differ in {what} ({a} vs {b}); cannot mix them in one cache."
                )
            what = {"teacher": "teachers", "weights_hash": "teacher weights", "head_hash": "heads"}.get(key, key)
            raise CdeitError(f"{first_path} and {path} differ in {key} ({a} vs {b}); cannot mix {what} in one cache.")
        for split in set(first["splits"]) & set(m["splits"]):
            a, b = first["splits"][split]["fingerprint"], m["splits"][split]["fingerprint"]
            if a != b:
                raise CdeitError(
                    f"{first_path} and {path} were computed for different data (split {split}: {a} vs {b})."
                )
        heads = [x["head"]["hash"] for x in (first, m) if x.get("head")]
        if len(set(heads)) > 1:
            raise CdeitError(
                f"{first_path} and {path} hold different heads ({heads[0]} vs {heads[1]}); cannot mix heads."
            )


def _copy_verified(src_dir: Path, out: Path, entry: Mapping[str, Any], created: list[Path]) -> None:
    src, dst = src_dir / entry["file"], out / entry["file"]
    if not src.is_file():
        raise CdeitError(f"{src} listed in {src_dir / MANIFEST} is missing; run `cdeit cache verify {src_dir}`.")
    if dst.is_file():
        if sha256_file(dst) != entry["sha256"]:
            raise CdeitError(f"{entry['file']} differs between {src_dir} and {out}; these caches cannot be merged.")
        return
    check_shard_attrs(src, read_attrs(src))  # links, outside storage, missing attributes: refused before copying
    _copy_file(src, dst)
    created.append(dst)
    if sha256_file(dst) != entry["sha256"]:
        dst.unlink()
        raise CdeitError(
            f"{src} does not match its checksum in {src_dir / MANIFEST}; run `cdeit cache verify {src_dir}`."
        )


def _copy_file(src: Path, dst: Path) -> None:
    from cdeit.common.atomic import atomic_path

    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
