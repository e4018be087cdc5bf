"""`cdeit data audit` and `cdeit data show`: source overlap between splits, and a picture of the types."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from cdeit.common.dataset import CORRUPTIONS, SEVERITIES, beton_path, check_betons, load_manifest, read_split
from cdeit.common.errors import CdeitError

MAX_COLUMNS = 20  # `show` draws at most this many classes, evenly spaced over the manifest's classes


def audit(data_dir: str | Path) -> dict[str, Any]:
    """For each pair of splits: shared source photographs and the share of each split's samples they make."""
    manifest = load_manifest(data_dir)
    check_betons(data_dir, manifest, list(manifest["splits"]))  # the files are the ones the manifest describes
    sources = {s: read_split(beton_path(data_dir, s), fields=("source",))["source"] for s in manifest["splits"]}
    pairs = []
    for a, b in itertools.combinations(sources, 2):
        shared = np.intersect1d(sources[a], sources[b])
        pairs.append(
            {
                "splits": [a, b],
                "shared_sources": int(len(shared)),
                f"{a}_samples_affected": float(np.isin(sources[a], shared).mean()) if len(sources[a]) else 0.0,
                f"{b}_samples_affected": float(np.isin(sources[b], shared).mean()) if len(sources[b]) else 0.0,
            }
        )
    return {
        "split_policy": manifest.get("split_policy"),
        "distinct_sources": {s: int(len(np.unique(v))) for s, v in sources.items()},
        "pairs": pairs,
    }


def show(data_dir: str | Path, out_png: str | Path, split: str = "test", severity: int = 3) -> Path:
    """PNG grid: rows are the image types present (at `severity`; clean at 0), columns are the classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cdeit.common.atomic import atomic_path
    from cdeit.common.dataset import split_info

    if severity not in SEVERITIES:
        raise CdeitError(f"--severity {severity} is out of range; choose {SEVERITIES[0]}..{SEVERITIES[-1]}.")
    manifest = load_manifest(data_dir)
    split_info(manifest, split, data_dir)
    check_betons(data_dir, manifest, [split])
    arrays = read_split(beton_path(data_dir, split), fields=("image", "label", "corruption", "severity"))
    names = manifest["classes"]
    shown = np.unique(np.linspace(0, len(names) - 1, min(len(names), MAX_COLUMNS)).round().astype(int))
    classes = [names[c] for c in shown]
    types = manifest.get("types", list(CORRUPTIONS))
    fig, axes = plt.subplots(len(types), len(classes), figsize=(len(classes) * 0.9, len(types) * 0.95), squeeze=False)
    for r, name in enumerate(types):
        t = CORRUPTIONS.index(name)
        want = 0 if t == 0 else severity
        for c, label in enumerate(shown):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            hits = np.flatnonzero(
                (arrays["corruption"] == t) & (arrays["label"] == label) & (arrays["severity"] == want)
            )
            if len(hits):
                ax.imshow(arrays["image"][hits[0]], interpolation="nearest")
            if r == 0:
                ax.set_title(classes[c], fontsize=7)
            if c == 0:
                ax.set_ylabel(name, fontsize=7, rotation=0, ha="right", va="center")
    some = f", {len(classes)} of {len(names)} classes" if len(classes) < len(names) else ""
    fig.suptitle(f"{Path(data_dir).name}: {split} split, severity {severity}{some}", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out_png
