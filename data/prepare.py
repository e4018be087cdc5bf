"""`cdeit data prepare`: choose samples per split, corrupt or copy them, pack FFCV betons and the manifest.

A *plan* is decided first from labels and source ids alone (cheap, fully checked), then materialised:
clean images are copied, CIFAR-10-C rows are read, generated corruptions are computed in parallel chunks
whose random streams depend only on (seed, split, type, severity, chunk) — never on the worker count.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from cdeit.common.atomic import check_free_space, remove_stale_tmp
from cdeit.common.console import progress_bar
from cdeit.common.dataset import (
    CORRUPTIONS,
    MANIFEST,
    SEVERITIES,
    SOURCES_FILE,
    SPLITS,
    check_betons,
    load_manifest,
)
from cdeit.common.errors import CdeitError
from cdeit.common.lock import LOCK_NAME
from cdeit.data.config import SOURCE_POOLS, PrepareConfig
from cdeit.data.inputs import class_count, read_inputs, recipe
from cdeit.data.sources import Photographs
from cdeit.data.writer import write_dataset

CHUNK = 2048  # images per corruption job
SAMPLE_OVERHEAD = 128  # FFCV's per-sample metadata, generously, on top of the raw S x S x 3 image


@dataclass
class Plan:
    """Per split: what each sample is and where its pixels come from (-1 where not applicable)."""

    label: np.ndarray
    corruption: np.ndarray
    severity: np.ndarray
    source: np.ndarray
    pooled: np.ndarray  # row in the source's pooled (train then test) images: the clean photograph
    c10c_row: np.ndarray  # row in CIFAR-10-C `<name>.npy` (-1: not from CIFAR-10-C)


def check_types(types: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [t for t in types if t not in CORRUPTIONS]
    if unknown:
        raise CdeitError(f"unknown image type {unknown[0]!r}; choose from {', '.join(CORRUPTIONS)}.")
    if len(set(types)) != len(types):
        raise CdeitError(f"image types {', '.join(types)} name one type twice; list each once.")
    return tuple(t for t in CORRUPTIONS if t in types)  # fixed order, codes stay 0..10


def _balanced_severities(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.resize(np.array(SEVERITIES), n))


def _plan_rows(
    rows: dict[str, list[dict[str, np.ndarray]]],
    split: int,
    t: int,
    label: int,
    src: np.ndarray,
    pooled: np.ndarray,
    severity: np.ndarray,
    c10c_row: np.ndarray | None = None,
) -> None:
    n = len(src)
    rows[SPLITS[split]].append(
        {
            "label": np.full(n, label),
            "corruption": np.full(n, t),
            "severity": severity,
            "source": src,
            "pooled": pooled,
            "c10c_row": np.full(n, -1) if c10c_row is None else c10c_row,
        }
    )


def make_plan(cfg: PrepareConfig, c10: Photographs, types: tuple[str, ...]) -> dict[str, Plan]:
    """Decide every sample of every split; raise before anything is written if the counts cannot be met."""
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0]))
    sizes = cfg.per_class_per_type
    _, labels, sources = c10.pooled()
    n_train = len(c10.train_labels)
    rows: dict[str, list[dict[str, np.ndarray]]] = {s: [] for s in SPLITS}
    codes = [CORRUPTIONS.index(t) for t in types]
    for y in range(class_count(c10)):
        pool_all = np.flatnonzero(labels == y)  # pooled rows of class y (train then test)
        pool_train = pool_all[pool_all < n_train]
        pool_test = pool_all[pool_all >= n_train]
        if c10.origin is not None:  # the folder gives the split: train/ -> train, val/ (and test/) -> val, test
            _plan_given(rows, rng, y, [pool_all[c10.origin[pool_all] == k] for k in range(3)], sources, codes, sizes)
        elif cfg.generate:
            pool = {"all": pool_all, "train": pool_train, "test": pool_test}[cfg.sources]
            _plan_generated(cfg, rows, rng, y, pool, sources, codes, sizes)
        else:
            _plan_cifar10c(cfg, rows, rng, y, pool_train, pool_test, sources, n_train, codes, sizes)
    plans = {}
    for split, parts in rows.items():
        cat = {k: np.concatenate([p[k] for p in parts]).astype(np.int64) for k in parts[0]}
        order = rng.permutation(len(cat["label"]))  # mix types and classes so any prefix is balanced
        plans[split] = Plan(**{k: v[order] for k, v in cat.items()})
    return plans


def _need(available: int, wanted: int, what: str) -> None:
    if wanted > available:
        raise CdeitError(
            f"--per-class-per-type asks for {wanted} {what} per class but the source holds {available}; "
            "choose smaller counts."
        )


def _plan_given(rows, rng, y, pools, sources, codes, sizes) -> None:  # noqa: ANN001
    """Each split's photographs from its own folder; without test/, val/ is cut into val and test."""
    if not len(pools[2]):
        _need(len(pools[1]), sizes[1] + sizes[2], "val/ photographs (val + test; no test/ folder)")
        perm = rng.permutation(pools[1])
        pools = [pools[0], perm[: sizes[1]], perm[sizes[1] :]]
    for s, folder in enumerate(("train/", "val/", "test/")):
        _need(len(pools[s]), sizes[s], f"{folder} photographs")
    _plan_splits(rows, rng, y, [rng.permutation(p)[:n] for p, n in zip(pools, sizes, strict=True)], sources, codes)


def _plan_splits(rows, rng, y, chosen_per_split, sources, codes) -> None:  # noqa: ANN001
    """Every chosen photograph once per image type inside its split, at balanced severities."""
    for s, chosen in enumerate(chosen_per_split):
        for t in codes:
            sev = np.zeros(len(chosen), np.int64) if t == 0 else _balanced_severities(len(chosen), rng)
            _plan_rows(rows, s, t, y, sources[chosen], chosen, sev)


def _plan_generated(cfg, rows, rng, y, pool, sources, codes, sizes) -> None:  # noqa: ANN001
    if cfg.split == "grouped":  # each source once per type, inside its own split
        _need(len(pool), sum(sizes), "distinct photographs (train + val + test, grouped split)")
        perm = rng.permutation(pool)
        bounds = np.cumsum((0, *sizes))
        _plan_splits(rows, rng, y, [perm[bounds[s] : bounds[s + 1]] for s in range(3)], sources, codes)
    else:  # paper: an independent random draw per type, so a photograph may recur across splits
        _need(len(pool), sum(sizes), "photographs per type (train + val + test)")
        for t in codes:
            perm = rng.permutation(pool)[: sum(sizes)]
            bounds = np.cumsum((0, *sizes))
            for s in range(3):
                chosen = perm[bounds[s] : bounds[s + 1]]
                sev = np.zeros(len(chosen), np.int64) if t == 0 else _balanced_severities(len(chosen), rng)
                _plan_rows(rows, s, t, y, sources[chosen], chosen, sev)


def _plan_cifar10c(cfg, rows, rng, y, pool_train, pool_test, sources, n_train, codes, sizes) -> None:  # noqa: ANN001
    bounds = np.cumsum((0, *sizes))
    n_test = len(sources) - n_train
    if cfg.sources == "test":  # clean images too from the test photographs: each split's own (grouped)
        _plan_cifar10c_test_only(cfg, rows, rng, y, pool_test, sources, n_train, codes, sizes)
        return
    if 0 in codes:  # clean images come from CIFAR-10 train, which CIFAR-10-C never uses
        _need(len(pool_train), sum(sizes), "clean CIFAR-10 train images")
        perm = rng.permutation(pool_train)
        for s in range(3):
            chosen = perm[bounds[s] : bounds[s + 1]]
            _plan_rows(rows, s, 0, y, sources[chosen], chosen, np.zeros(len(chosen), np.int64))
    corrupt_codes = [t for t in codes if t != 0]
    if not corrupt_codes:
        return
    if cfg.split == "grouped":  # allocate test photographs to splits; each gives 5 severities per corruption
        per_split = [math.ceil(n / len(SEVERITIES)) for n in sizes]
        _need(len(pool_test), sum(per_split), "CIFAR-10-C photographs (each gives 5 severities; grouped split)")
        perm = rng.permutation(pool_test)
        pb = np.cumsum((0, *per_split))
        for s in range(3):
            photos = perm[pb[s] : pb[s + 1]]
            cand_pooled = np.repeat(photos, len(SEVERITIES))
            cand_sev = np.tile(np.array(SEVERITIES), len(photos))
            for t in corrupt_codes:
                pick = rng.permutation(len(cand_pooled))[: sizes[s]]
                _add_c10c(rows, s, t, y, cand_pooled[pick], cand_sev[pick], sources, n_train, n_test)
    else:
        cand_pooled = np.repeat(pool_test, len(SEVERITIES))
        cand_sev = np.tile(np.array(SEVERITIES), len(pool_test))
        _need(len(cand_pooled), sum(sizes), "CIFAR-10-C images per corruption")
        for t in corrupt_codes:
            pick = rng.permutation(len(cand_pooled))[: sum(sizes)]
            for s in range(3):
                sel = pick[bounds[s] : bounds[s + 1]]
                _add_c10c(rows, s, t, y, cand_pooled[sel], cand_sev[sel], sources, n_train, n_test)


def _plan_cifar10c_test_only(cfg, rows, rng, y, pool_test, sources, n_train, codes, sizes) -> None:  # noqa: ANN001
    """CIFAR-10-C with every source a test photograph: a split's clean images are photographs of its own."""
    n_test = len(sources) - n_train
    corrupt_codes = [t for t in codes if t != 0]
    bounds = np.cumsum((0, *sizes))
    if cfg.split != "grouped":  # paper: independent draws, clean ones from the test photographs as well
        if 0 in codes:
            _need(len(pool_test), sum(sizes), "clean CIFAR-10 test photographs (--sources test)")
            perm = rng.permutation(pool_test)
            for s in range(3):
                chosen = perm[bounds[s] : bounds[s + 1]]
                _plan_rows(rows, s, 0, y, sources[chosen], chosen, np.zeros(len(chosen), np.int64))
        cand_pooled, cand_sev = np.repeat(pool_test, len(SEVERITIES)), np.tile(np.array(SEVERITIES), len(pool_test))
        for t in corrupt_codes:
            _need(len(cand_pooled), sum(sizes), "CIFAR-10-C images per corruption")
            pick = rng.permutation(len(cand_pooled))[: sum(sizes)]
            for s in range(3):
                sel = pick[bounds[s] : bounds[s + 1]]
                _add_c10c(rows, s, t, y, cand_pooled[sel], cand_sev[sel], sources, n_train, n_test)
        return
    per_split = [max(n if 0 in codes else 0, math.ceil(n / len(SEVERITIES)) if corrupt_codes else 0) for n in sizes]
    _need(len(pool_test), sum(per_split), "CIFAR-10 test photographs (--sources test, grouped split)")
    perm = rng.permutation(pool_test)
    pb = np.cumsum((0, *per_split))
    for s in range(3):
        photos = perm[pb[s] : pb[s + 1]]
        if 0 in codes:
            chosen = rng.permutation(photos)[: sizes[s]]
            _plan_rows(rows, s, 0, y, sources[chosen], chosen, np.zeros(len(chosen), np.int64))
        cand_pooled = np.repeat(photos, len(SEVERITIES))
        cand_sev = np.tile(np.array(SEVERITIES), len(photos))
        for t in corrupt_codes:
            pick = rng.permutation(len(cand_pooled))[: sizes[s]]
            _add_c10c(rows, s, t, y, cand_pooled[pick], cand_sev[pick], sources, n_train, n_test)


def _add_c10c(rows, s, t, y, pooled, sev, sources, n_train, n_test) -> None:  # noqa: ANN001
    test_i = pooled - n_train
    _plan_rows(rows, s, t, y, sources[pooled], pooled, sev, c10c_row=(sev - 1) * n_test + test_i)


def _corrupt_job(images: np.ndarray, name: str, severity: int, seed: list[int]) -> np.ndarray:
    from cdeit.data.corruptions import corrupt

    return corrupt(images, name, severity, np.random.default_rng(np.random.SeedSequence(seed)))


def materialise(
    cfg: PrepareConfig, plans: dict[str, Plan], c10: Photographs, c10c: dict[str, Any] | None, advance: Any = None
) -> dict[str, dict[str, np.ndarray]]:
    """Fill every split's images: copies, CIFAR-10-C reads, and generated corruptions in parallel."""
    pooled_images, _, _ = c10.pooled()
    out: dict[str, dict[str, np.ndarray]] = {}
    jobs = []
    for k, (split, plan) in enumerate(plans.items()):
        n = len(plan.label)
        images = np.empty((n, *pooled_images.shape[1:]), np.uint8)
        clean = np.flatnonzero(plan.corruption == 0)
        images[clean] = pooled_images[plan.pooled[clean]]
        if advance:
            advance(len(clean))
        for t in np.unique(plan.corruption[plan.corruption > 0]):
            name = CORRUPTIONS[t]
            for sev in SEVERITIES:
                pos = np.flatnonzero((plan.corruption == t) & (plan.severity == sev))
                if not len(pos):
                    continue
                if c10c is not None:
                    rows = plan.c10c_row[pos]
                    order = np.argsort(rows)  # sorted reads from the memory map
                    images[pos[order]] = c10c[name][rows[order]]
                    if advance:
                        advance(len(pos))
                    continue
                for c, start in enumerate(range(0, len(pos), CHUNK)):
                    part = pos[start : start + CHUNK]
                    jobs.append((split, part, name, sev, [cfg.seed, k, int(t), sev, c]))
        out[split] = {
            "image": images,
            "label": plan.label,
            "corruption": plan.corruption,
            "severity": plan.severity,
            "index": np.arange(n, dtype=np.int64),
            "source": plan.source,
        }
    _run_jobs(cfg, jobs, out, plans, pooled_images, advance)
    return out


def _run_jobs(cfg, jobs, out, plans, pooled_images, advance) -> None:  # noqa: ANN001
    if not jobs:
        return
    if cfg.workers <= 1:
        for split, part, name, sev, seed in jobs:
            out[split]["image"][part] = _corrupt_job(pooled_images[plans[split].pooled[part]], name, sev, seed)
            if advance:
                advance(len(part))
        return
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(cfg.workers, mp_context=get_context("fork")) as pool:
            futures = [
                (split, part, pool.submit(_corrupt_job, pooled_images[plans[split].pooled[part]], name, sev, seed))
                for split, part, name, sev, seed in jobs
            ]
            for split, part, fut in futures:
                out[split]["image"][part] = fut.result()
                if advance:
                    advance(len(part))
    except BrokenProcessPool:  # a worker killed (the OOM killer, a signal): nothing was written yet
        raise CdeitError(
            f"a corruption worker process died while preparing {cfg.out} (out of memory?); nothing was written. "
            "Rerun with fewer --workers or free memory."
        ) from None


def source_images(plans: dict[str, Plan], c10: Photographs) -> dict[str, np.ndarray]:
    """One clean image per source photograph used in any split, sorted by source id."""
    pooled_images, labels, _ = c10.pooled()
    source = np.concatenate([p.source for p in plans.values()])
    pooled = np.concatenate([p.pooled for p in plans.values()])
    ids, first = np.unique(source, return_index=True)
    rows = pooled[first]
    n = len(ids)
    zeros = np.zeros(n, np.int64)
    return {"image": pooled_images[rows], "label": labels[rows].astype(np.int64), "corruption": zeros,
            "severity": zeros, "index": np.arange(n, dtype=np.int64), "source": ids.astype(np.int64)}  # fmt: skip


def _check_out(out: Path, wanted: dict[str, Any]) -> bool:
    """True if OUT already holds this very dataset; raise if it holds anything else."""
    if (out / MANIFEST).is_file():
        manifest = load_manifest(out)
        differs = [k for k, v in wanted.items() if manifest.get(k) != v]
        if differs:
            raise CdeitError(
                f"{out} already holds a different dataset ({', '.join(differs)} differ); "
                "choose another --out or delete that directory."
            )
        return True
    if out.exists() and not out.is_dir():
        raise CdeitError(f"--out {out} is a file; give a directory path.")
    if out.is_dir():
        ours = {f"{s}.beton" for s in SPLITS} | {SOURCES_FILE, LOCK_NAME}
        foreign = [p.name for p in out.iterdir() if p.name not in ours and ".tmp-" not in p.name]
        if foreign:
            raise CdeitError(f"--out {out} already holds other files ({foreign[0]}, ...); choose an empty directory.")
    return False


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Build the dataset of `cfg`; returns its manifest. Every check runs before anything is written."""
    from cdeit.data.inputs import check_options

    check_options(cfg)  # one source, its own -C set or generate: refused before anything is read
    if cfg.sources not in SOURCE_POOLS:
        raise CdeitError(f"--sources {cfg.sources!r} is unknown; choose {', '.join(SOURCE_POOLS)}.")
    if cfg.sources == "train" and not cfg.generate:
        raise CdeitError("--sources train needs --corruptions generate: a -C set corrupts only test photographs.")
    if any(n < 0 for n in cfg.per_class_per_type) or cfg.per_class_per_type[0] == 0:
        raise CdeitError(f"--per-class-per-type {cfg.per_class_per_type} must be non-negative with train > 0.")
    types = check_types(cfg.types)
    inputs = read_inputs(cfg, types)
    c10, c10c = inputs.photos, inputs.corrupted
    if cfg.generate and any(t in ("frost",) for t in types):
        from cdeit.data.frost_photos import frost_photos

        frost_photos()  # fail now, not after minutes of work, if the photographs are missing
    wanted = recipe(cfg, types, inputs)
    if _check_out(cfg.out, wanted):
        manifest = load_manifest(cfg.out)
        files = [*manifest["splits"], *(["sources"] if "source_images" in manifest else [])]
        check_betons(cfg.out, manifest, files)  # "nothing to do" only over files that are still what was written
        return manifest | {"reused": True}
    plans = make_plan(cfg, c10, types)
    total = sum(len(p.label) for p in plans.values())
    remove_stale_tmp(cfg.out)  # half-written betons of a killed run (up to GBs)
    n_sources = len(np.unique(np.concatenate([p.source for p in plans.values()])))
    per_image = c10.image_size**2 * 3 + SAMPLE_OVERHEAD
    check_free_space(cfg.out, (total + n_sources) * per_image + (1 << 20), f"the dataset in {cfg.out}")
    with progress_bar("preparing images", total) as advance:
        splits = materialise(cfg, plans, c10, c10c, advance)
    meta = wanted | {"classes": c10.class_names, "config": _config_json(cfg)}
    sources = source_images(plans, c10)
    with progress_bar("packing .beton files", len(splits), unit="splits") as advance:
        manifest = write_dataset(
            cfg.out, splits, meta, workers=cfg.workers, on_split=lambda: advance(1), sources=sources
        )
    return manifest


def _config_json(cfg: PrepareConfig) -> dict[str, Any]:
    d = asdict(cfg)
    return {k: str(v) if isinstance(v, Path) else v for k, v in d.items()}
