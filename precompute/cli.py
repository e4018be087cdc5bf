"""The precompute stage's commands: `cdeit precompute-teacher` and `cdeit cache info|verify|merge`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cdeit.common.console import friendly_errors
from cdeit.common.options import ConfigOptions, comma_list, defaults
from cdeit.precompute.config import PrecomputeConfig

TEACHER_HELP = (
    "Any name timm accepts: NAME, NAME.TAG, hf-hub:ORG/REPO, local-dir:/PATH (timm's config and weights), a "
    "model that --teacher-module registers, or run:RUN_DIR (a run of cdeit train --model). Pretrained weights "
    "come from --checkpoint, else the local Hugging Face cache (HF_HOME, no network; HF_HUB_OFFLINE=1 too), else the "
    "hub. "
    "Default: DeiT-III Small, pretrained (see precompute in docs)."
)

app = typer.Typer(help="Inspect, verify and merge teacher-logit caches.", no_args_is_help=True)
D = defaults(PrecomputeConfig)  # the option defaults: PrecomputeConfig is their only home
PRECOMPUTE_OPTIONS = ConfigOptions(PrecomputeConfig, splits=comma_list, targets=comma_list)


@friendly_errors
@PRECOMPUTE_OPTIONS.command
def precompute_teacher(
    ctx: typer.Context,
    data: Annotated[Path, typer.Option("--data", help="Dataset directory from `cdeit data prepare`.")],
    out: Annotated[Path, typer.Option("--out", help="Cache directory to create or resume.")],
    teacher: Annotated[str, typer.Option(help=TEACHER_HELP, show_default=False)] = D.teacher,
    teacher_module: Annotated[
        str | None,
        typer.Option(
            help="FILE.py or package.module imported before --teacher is looked up, so a model your code registers "
            "with timm's @register_model can be the teacher (its pretrained_cfg sets size, mean, std, interpolation)."
        ),
    ] = D.teacher_module,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            help="Teacher weights for a NAME: .safetensors, or .pth read with weights_only=True (never pickles); "
            "loaded by timm, whose checkpoint filter maps official layouts (e.g. facebookresearch DeiT-III)."
        ),
    ] = D.checkpoint,
    random_weights: Annotated[
        bool, typer.Option("--random-weights", help="Untrained teacher (benchmarks, tests).")
    ] = D.random_weights,
    head: Annotated[
        str | None,
        typer.Option(
            help="A fitted head.safetensors to reuse, or 'none' for the teacher's own head. "
            "Default: fit a linear head on the train features (paper 4.1)."
        ),
    ] = D.head,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per forward. Default: 1024 on CUDA, 64 on CPU.")
    ] = D.batch_size,
    shard_size: Annotated[
        int, typer.Option(help="Samples per HDF5 shard (a multiple of the batch size).")
    ] = D.shard_size,
    store_features: Annotated[
        bool, typer.Option("--store-features", help="Also keep the float16 pre-logit features in the shards.")
    ] = D.store_features,
    shard_index: Annotated[int, typer.Option(help="Which slice of the shards this machine computes.")] = D.shard_index,
    num_shards: Annotated[
        int, typer.Option(help="Number of slices (machines) the shards are split over.")
    ] = D.num_shards,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = D.device,
    seed: Annotated[int, typer.Option(help="Seed of the head fit (and of random weights).")] = D.seed,
    workers: Annotated[int | None, typer.Option(help="Image decoding threads. Default: min(8, cores).")] = D.workers,
    head_epochs: Annotated[int, typer.Option(help="Epochs of the head fit over the cached features.")] = D.head_epochs,
    head_lr: Annotated[float, typer.Option(help="AdamW learning rate of the head fit (paper: 5e-5).")] = D.head_lr,
    head_standardize: Annotated[
        bool, typer.Option("--head-standardize", help="Fit the head on z-scored features (folded back into the head).")
    ] = D.head_standardize,
    splits: Annotated[str, typer.Option(help="Comma-separated splits to cache.")] = ",".join(D.splits),
    view: Annotated[
        str,
        typer.Option(
            help="same: the teacher sees every sample (the paper); clean: it sees each sample's clean source image, "
            "once per source, and the cache is keyed by source id (needs the dataset's sources.beton)."
        ),
    ] = D.view,
    targets: Annotated[
        str,
        typer.Option(
            help="What to store, comma-separated: logits (always), embedding (pre-logit, as --store-features does), "
            "patches (final patch tokens pooled to 8x8), attention (last block's class-token map, 8x8)."
        ),
    ] = ",".join(D.targets),
    views: Annotated[
        int,
        typer.Option(
            help="Also store the teacher's logits on K augmented views of every train sample (erasing, Mixup/CutMix "
            "drawn from --seed), replayed exactly by cdeit train (see consistent views in docs). 0: none (the paper)."
        ),
    ] = D.views,
    erasing_prob: Annotated[float, typer.Option(help="--views: random erasing probability.")] = D.erasing_prob,
    mixup_prob: Annotated[float, typer.Option(help="--views: Mixup probability per view.")] = D.mixup_prob,
    mixup_alpha: Annotated[float, typer.Option(help="--views: Beta(alpha, alpha) of Mixup.")] = D.mixup_alpha,
    cutmix_prob: Annotated[float, typer.Option(help="--views: CutMix probability per view.")] = D.cutmix_prob,
    cutmix_alpha: Annotated[float, typer.Option(help="--views: Beta(alpha, alpha) of CutMix.")] = D.cutmix_alpha,
) -> None:
    """Cache the teacher's logits of every image: features, a fitted 10-way head, logits in HDF5 shards."""
    from cdeit.common.lock import output_lock
    from cdeit.precompute.run import precompute_teacher as run

    cfg = PRECOMPUTE_OPTIONS.build(ctx)
    with output_lock(cfg.out, "cdeit precompute-teacher"):
        run(cfg)


@app.command("info")
@friendly_errors
def info(cache: Annotated[Path, typer.Argument(help="Cache directory.")]) -> None:
    """Print a cache's provenance: teacher, weights and head hashes, data fingerprints, preprocessing, splits."""
    from cdeit.common.cache import cache_info
    from cdeit.common.console import out

    manifest = cache_info(cache)
    for line in info_lines(manifest):
        out.print(line)


def info_lines(m: dict[str, Any]) -> list[str]:
    """The lines `cdeit cache info` prints."""
    p, head, shards = m["provenance"], m.get("head") or {}, m["shards"]
    rows = [
        ("teacher", f"{p.get('teacher')} ({p.get('weights_source')})"),
        *(
            [("teacher module", f"{p['teacher_module']} ({p.get('teacher_module_sha256')})")]
            if p.get("teacher_module")
            else []
        ),
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
        *_views_rows(m),
        *_record_rows(m),
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


def _record_rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    """`cache info`: the temperature fitted on val with the ECE before and after, and each pass's throughput."""
    c = m.get("calibration")
    rows = [("temperature", "not fitted (train --teacher-temperature auto uses 1)")]
    if c:
        text = f"{c['temperature']:.4g}, fitted on {c['split']} ({c['count']:,} images): "
        rows = [("temperature", text + f"ECE {c['ece_before']:.4f} -> {c['ece_after']:.4f}")]
    for name, t in (m.get("throughput") or {}).items():
        text = f"{t['images']:,} images in {t['seconds']:.1f} s, {t['images_per_s']:,.1f} images/s"
        rows.append((f"{name} pass", f"{text} on {t['device_name']} ({t['device']}, batch {t['batch_size']})"))
    return rows


def _views_rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    """`cache info` of a K-view cache: K, the seed and settings of the draws, and the size of the views."""
    a = m.get("augmented") or {}
    if not a:
        return []
    s, size = a["settings"], sum(e["bytes"] for e in m.get("augmented_shards", []))
    settings = (
        f"erasing {s['erasing_prob']:g}, mixup {s['mixup_prob']:g} (alpha {s['mixup_alpha']:g}), "
        f"cutmix {s['cutmix_prob']:g} (alpha {s['cutmix_alpha']:g}), render v{s['render_version']}"
    )
    return [
        ("views", f"{a['views']} augmented views per train sample, seed {a['seed']}: {settings}"),
        ("view shards", f"{a['shards']}/{a['num_shards']}, {size / 2**20:,.1f} MiB ({a['count']:,} x {a['views']})"),
    ]


VIEW_TEXT = {
    "same": "same (the teacher saw each sample itself; rows joined by sample index)",
    "clean": "clean (the teacher saw each sample's clean source image; rows keyed by source id, joined by source)",
}


def _targets_text(p: dict[str, Any]) -> str:
    from cdeit.common.cache import cache_targets

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
        Path | None,
        typer.Option(help="Dataset directory whose fingerprints the cache must match (and views re-render from)."),
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="With --data: re-render every augmented view, not a sample of 256.")
    ] = False,
) -> None:
    """Check checksums, coverage of every index, finite values and (with --data) fingerprints; exit 1 if wrong."""
    from cdeit.common.cache import read_cache_manifest, verify_cache, views_of
    from cdeit.common.console import out

    problems = verify_cache(cache, data, full)
    if data is not None:
        problems += _data_file_problems(cache, data)
    if problems:
        out.print(f"[bold red]{cache}: {len(problems)} problem(s)[/]")
        for p in problems:
            out.print(f"  - {p}")
        raise typer.Exit(1)
    rendered = ""
    if data and views_of(read_cache_manifest(cache)["provenance"]):
        rendered = ", every view re-rendered" if full else ", a sample of views re-rendered"
    out.print(f"[green]{cache}: ok[/] (checksums, coverage, finite values{', fingerprints' if data else ''}{rendered})")


def _data_file_problems(cache: Path, data: Path) -> list[str]:
    """`--data`: each .beton the cache covers, fully rehashed against the dataset manifest's checksum."""
    from cdeit.common.cache import read_cache_manifest
    from cdeit.common.dataset import check_betons, load_manifest
    from cdeit.common.errors import CdeitError

    try:
        manifest, splits = load_manifest(data), read_cache_manifest(cache)["splits"]
    except CdeitError:
        return []  # verify_cache has said what is wrong with either
    problems = []
    for split in splits:
        if split in manifest.get("splits", {}) or (split == "sources" and "source_images" in manifest):
            try:
                check_betons(data, manifest, [split], full=True)
            except CdeitError as exc:
                problems.append(str(exc))
    return problems


@app.command("merge")
@friendly_errors
def merge(
    caches: Annotated[list[Path], typer.Argument(help="Caches (slices) to join.")],
    out_dir: Annotated[Path, typer.Option("--out", help="The merged cache directory.")],
) -> None:
    """Join slices computed on different machines into one cache, refusing to mix teachers, heads or data."""
    from cdeit.common.atomic import remove_stale_tmp
    from cdeit.common.cache import merge_caches
    from cdeit.common.cache.merge import check_merge_out
    from cdeit.common.console import out
    from cdeit.common.lock import output_lock

    check_merge_out(out_dir)  # a run or a dataset as --out: refused before the lock touches it
    with output_lock(out_dir, "cdeit cache merge"):
        remove_stale_tmp(out_dir, recursive=True)  # a killed merge's half-copied shards, features/ included
        _check_merge_space(caches, out_dir)
        manifest = merge_caches(caches, out_dir)
    state = "complete" if manifest["complete"] else "incomplete (run precompute-teacher on it to finish)"
    out.print(f"merged {len(caches)} caches into {out_dir}: {len(manifest['shards'])} logit shards, {state}.")


def _check_merge_space(caches: list[Path], out_dir: Path) -> None:
    """Refuse a merge whose shards do not fit the free space of --out, before copying any (one sentence)."""
    from cdeit.common.atomic import check_free_space
    from cdeit.common.cache import read_cache_manifest

    need = 0
    for cache in caches:
        manifest = read_cache_manifest(cache)
        entries = manifest["shards"] + manifest["feature_shards"]
        need += sum(int(e.get("bytes", 0)) for e in entries if not (out_dir / e["file"]).is_file())
    check_free_space(out_dir, need + (1 << 16), f"merging into {out_dir}")


def register(root: typer.Typer) -> None:
    """Entry point `cdeit.commands:precompute`: adds `precompute-teacher` and the `cache` group."""
    root.command("precompute-teacher")(precompute_teacher)
    root.add_typer(app, name="cache")
