"""What the teacher cache saved, from measured figures only: the precompute's own passes (their wall time and the
teacher's images/s, recorded in the cache manifest's `throughput`) and the images each compared run trained on
(summary.json's `train_images`). An online teacher runs one forward pass per training image: at the cache's own
images/s, `train_images / images_per_s` seconds. Where a figure is missing the line says "not recorded".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cdeit.common.errors import CdeitError
from cdeit.train.studies.results import RunResult


def run_images(run: RunResult) -> int | None:
    """The training images a run saw (summary.json's train_images; from images/s x seconds for an older run)."""
    s = run.summary
    if isinstance(s.get("train_images"), int):
        return s["train_images"]
    if s.get("train_images_per_s") and s.get("train_seconds"):
        return round(s["train_images_per_s"] * s["train_seconds"])
    return None


def cache_throughput(cache: str) -> dict[str, Any]:
    """The manifest's `throughput` of a cache ({} when it records none or cannot be read)."""
    from cdeit.common.cache import read_cache_manifest

    try:
        return read_cache_manifest(Path(cache)).get("throughput") or {}
    except CdeitError:
        return {}


def cache_line(path: str, runs: list[RunResult]) -> str:
    """One cache: its precompute time, the runs that reused it, and what an online teacher would have cost them."""
    counts = [run_images(r) for r in runs]
    images = sum(c for c in counts if c is not None)
    seen = f"{images:,} training images" + (f" ({counts.count(None)} runs not recorded)" if None in counts else "")
    head = f"Teacher cache `{path}`: reused by {len(runs)} run{'s' if len(runs) > 1 else ''} ({seen}, summary.json)"
    passes = cache_throughput(path)
    features = passes.get("features")
    if not features:
        return f"{head}; its precompute time and the teacher's images/s are not recorded in its manifest, so what an " \
            "online teacher would have cost is not recorded."  # fmt: skip
    paid = sum(p["seconds"] for p in passes.values())
    rate, device = features["images_per_s"], f"{features['device_name']} ({features['device']})"
    online = images / rate
    return (
        f"{head}; its precompute took {paid:,.1f} s once ({', '.join(_pass_text(n, p) for n, p in passes.items())}). "
        f"An online teacher would have run {images:,} forward passes at the cache's own {rate:,.1f} images/s on "
        f"{device}: about {online:,.1f} s, {online - paid:+,.1f} s against the precompute (figures: the manifest's "
        f"throughput.features and the runs' train_images)."
    )


def _pass_text(name: str, p: dict[str, Any]) -> str:
    return f"{name} pass {p['seconds']:,.1f} s for {p['images']:,} images, {p['images_per_s']:,.1f} images/s"


def cache_savings(caches: dict[str, list[RunResult]]) -> list[str]:
    """One sentence per cache (see `cache_line`), and one for the runs that ran the teacher online instead."""
    if not caches:
        return ["No compared run read a teacher cache (no distillation), so the cache saved nothing here."]
    online = [r for runs in caches.values() for r in runs if r.config.get("online_teacher")]
    cached = {p: [r for r in runs if not r.config.get("online_teacher")] for p, runs in caches.items()}
    lines = [cache_line(path, runs) for path, runs in cached.items() if runs]
    if online:
        train_s = sum(r.summary.get("train_seconds") or 0 for r in online)
        lines.append(
            f"{len(online)} run{'s' if len(online) > 1 else ''} ran the teacher online instead (`--online-teacher`), "
            f"{train_s:,.0f} s of training in all, the teacher's forward passes included."
        )
    return lines
