"""`cdeit cache info|verify|merge`: inspect, check and join teacher caches."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from common.console import friendly_errors

app = typer.Typer(help="Inspect, verify and merge teacher-logit caches.", no_args_is_help=True)


@app.command("info")
@friendly_errors
def info(cache: Annotated[Path, typer.Argument(help="Cache directory.")]) -> None:
    """Print a cache's provenance: teacher, weights and head hashes, data fingerprints, preprocessing, splits."""
    from common.cache import cache_info
    from common.console import out

    manifest = cache_info(cache)
    for line in info_lines(manifest):
        out.print(line)


def info_lines(m: dict[str, Any]) -> list[str]:
    """The lines `cdeit cache info` prints."""
    p, head, shards = m["provenance"], m.get("head") or {}, m["shards"]
    rows = [
        ("teacher", f"{p.get('teacher')} ({p.get('weights_source')})"),
        ("random weights", "YES: logits of an untrained teacher" if p.get("random_weights") else "no"),
        ("weights hash", p.get("weights_hash")),
        (
            "head",
            f"{head.get('hash', p.get('head_hash'))} ({head.get('source', 'none')})"
            if head or p.get("head_hash")
            else "none yet",
        ),
        ("preprocessing", f"{p.get('input_size')} {p.get('interpolation')}, mean {p.get('mean')}, std {p.get('std')}"),
        ("compute", f"{p.get('compute_dtype')} on {p.get('device_type')}, shard size {p.get('shard_size')}"),
        ("classes", f"{m['dataset']['num_classes']}: {', '.join(m['dataset']['classes'])}"),
        ("view", VIEW_TEXT.get(p.get("view") or "same", p.get("view"))),
        ("targets", _targets_text(p)),
        ("shards", f"{len(shards)} with logits, {len(m['feature_shards'])} with features only"),
        ("size on disk", f"{m['bytes_on_disk'] / 2**20:,.1f} MiB"),
        ("complete", "yes" if m["complete"] else "no"),
    ]
    lines = [f"{k:<15} {v}" for k, v in rows]
    for split, s in m["splits"].items():
        acc = "-" if s["accuracy"] is None else f"{s['accuracy']:.2%}"
        lines.append(
            f"split {split:<9} {s['count']:,} images, {s['shards_with_logits']}/{s['num_shards']} shards, "
            f"teacher accuracy {acc}, fingerprint {s['fingerprint']}"
        )
    return lines


VIEW_TEXT = {
    "same": "same (the teacher saw each sample itself; rows joined by sample index)",
    "clean": "clean (the teacher saw each sample's clean source image; rows keyed by source id, joined by source)",
}


def _targets_text(p: dict[str, Any]) -> str:
    from common.cache import cache_targets

    dtypes = {"logits": "float32", "embedding": "float16", "patches": "float16", "attention": "float16"}
    text = ", ".join(f"{t} {dtypes[t]}" for t in cache_targets(p))
    grid = p.get("target_grid")
    return text + (f" (per-patch targets on the {grid[0]}x{grid[1]} grid, teacher grid {p.get('teacher_grid')})"
                   if grid else "")  # fmt: skip


@app.command("verify")
@friendly_errors
def verify(
    cache: Annotated[Path, typer.Argument(help="Cache directory.")],
    data: Annotated[
        Path | None, typer.Option(help="Dataset directory whose fingerprints the cache must match.")
    ] = None,
) -> None:
    """Check checksums, coverage of every index, finite values and (with --data) fingerprints; exit 1 if wrong."""
    from common.cache import verify_cache
    from common.console import out

    problems = verify_cache(cache, data)
    if problems:
        out.print(f"[bold red]{cache}: {len(problems)} problem(s)[/]")
        for p in problems:
            out.print(f"  - {p}")
        raise typer.Exit(1)
    out.print(f"[green]{cache}: ok[/] (checksums, coverage, finite values{', fingerprints' if data else ''})")


@app.command("merge")
@friendly_errors
def merge(
    caches: Annotated[list[Path], typer.Argument(help="Caches (slices) to join.")],
    out_dir: Annotated[Path, typer.Option("--out", help="The merged cache directory.")],
) -> None:
    """Join slices computed on different machines into one cache, refusing to mix teachers, heads or data."""
    from common.cache import merge_caches
    from common.console import out

    manifest = merge_caches(caches, out_dir)
    state = "complete" if manifest["complete"] else "incomplete (run precompute-teacher on it to finish)"
    out.print(f"merged {len(caches)} caches into {out_dir}: {len(manifest['shards'])} logit shards, {state}.")
