"""The regime study's table and figure (docs/results.md, "Where distillation pays").

Usage: python bench/regime/figure.py STUDY_ROOT OUT.png
STUDY_ROOT holds one study folder per cell, named n<train images>-e<epochs> (bench/regime/run.sh). For every cell the
runs are read and grouped as `cdeit compare` reads them (cdeit.train.studies.results), and each distilled arm's
paired difference from the ViT of the same seed is taken with compare's own function (mean, 95% t interval).
Writes OUT.png, and beside it OUT.md (the table, each cell's verdict by the pre-registered rule) and OUT.csv.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

from cdeit.common.cache import read_cache_manifest
from cdeit.train.studies.results import collect, group_runs
from cdeit.train.studies.tables import mean_std, paired_difference
from cdeit.train.use.plots import pyplot, save

ARMS = ("hard", "soft", "soft-cal")
COLOURS = {"hard": "tab:blue", "soft": "tab:orange", "soft-cal": "tab:green"}
CELL = re.compile(r"^n(\d+)-e(\d+)$")


def verdict(d: dict, words: tuple[str, str] = ("pays", "costs")) -> str:
    """The reading rule written before the runs: an interval wholly above 0 pays, wholly below costs (for ECE: the
    student's ECE rises or falls)."""
    if d.get("low") is None:
        return "n < 2"
    if d["low"] > 0:
        return words[0]
    if d["high"] < 0:
        return words[1]
    return "unresolved"


def read_cells(root: Path) -> list[dict]:
    rows = []
    for cell in sorted(root.iterdir()):
        m = CELL.match(cell.name)
        if not (m and (cell / "plan.json").is_file()):
            continue
        try:
            runs, _ = collect([cell], "test")
        except Exception as exc:  # a cell with no evaluated run yet  # noqa: BLE001
            print(f"{cell.name}: {exc}", file=sys.stderr)
            continue
        groups = {g.name: g for g in group_runs(runs)}
        ref = groups.get("vit")
        size, epochs = int(m.group(1)), int(m.group(2))
        cache = next((r.config["teacher_cache"] for r in runs if r.config.get("teacher_cache")), None)
        teacher = read_cache_manifest(cache)["splits"]["test"].get("accuracy") if cache else None
        for name in ("vit", *ARMS):
            g = groups.get(name)
            if g is None:
                continue
            acc, acc_sd = mean_std(g.values("accuracy"))
            ece, _ = mean_std(g.values("ece"))
            teacher_pct = None if teacher is None else 100 * teacher
            row = {"size": size, "epochs": epochs, "arm": name, "n": len(g.runs), "accuracy": acc,
                   "accuracy_sd": acc_sd, "ece": ece, "teacher_accuracy": teacher_pct}  # fmt: skip
            if ref is not None and name != "vit":
                for metric in ("accuracy", "ece"):
                    d = paired_difference(g, ref, metric)
                    row |= {f"d_{metric}": d["mean"], f"d_{metric}_low": d.get("low"),
                            f"d_{metric}_high": d.get("high")}  # fmt: skip
                    words = ("pays", "costs") if metric == "accuracy" else ("rises", "falls")
                    row[f"{metric}_verdict"] = verdict(d, words)
            rows.append(row)
    order = ("vit", *ARMS)
    return sorted(rows, key=lambda r: (r["size"], r["epochs"], order.index(r["arm"])))


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _interval(r: dict, metric: str, fmt: str) -> str:
    return f"{_num(r[f'd_{metric}'], fmt)} [{_num(r[f'd_{metric}_low'], fmt)}, {_num(r[f'd_{metric}_high'], fmt)}]"


def write_table(rows: list[dict], md: Path, csv_path: Path) -> None:
    keys = list(dict.fromkeys(k for r in sorted(rows, key=len, reverse=True) for k in r))
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    lines = ["| train images | epochs | arm | n | accuracy (%) | Δ accuracy vs ViT [95% CI] | verdict | ECE "
             "| Δ ECE [95% CI] |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        acc = f"{_num(r['accuracy'], '.2f')} ± {_num(r['accuracy_sd'], '.2f')}"
        d_acc = d_ece = verdict_acc = "-"
        if "d_accuracy" in r:
            d_acc = _interval(r, "accuracy", "+.2f")
            d_ece = _interval(r, "ece", "+.3f")
            verdict_acc = r["accuracy_verdict"]
        lines.append(f"| {r['size']:,} | {r['epochs']} | {r['arm']} | {r['n']} | {acc} | {d_acc} | {verdict_acc} | "
                     f"{_num(r['ece'], '.3f')} | {d_ece} |")  # fmt: skip
    md.write_text("\n".join(lines) + "\n")


def draw(rows: list[dict], out: Path) -> None:
    plt = pyplot()
    sizes = sorted({r["size"] for r in rows})
    fig, axes = plt.subplots(3, len(sizes), figsize=(5.2 * len(sizes), 10.5), squeeze=False, sharex=True,
                             sharey="row")  # fmt: skip
    for col, size in enumerate(sizes):
        cell = [r for r in rows if r["size"] == size]
        ax = axes[0][col]
        for arm in ("vit", *ARMS):
            pts = sorted((r["epochs"], r["accuracy"], r["accuracy_sd"] or 0.0) for r in cell if r["arm"] == arm)
            if pts:
                x, y, e = zip(*pts, strict=True)
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=arm, color=COLOURS.get(arm, "black"))
        teacher = [r["teacher_accuracy"] for r in cell if r.get("teacher_accuracy") is not None]
        if teacher:
            ax.axhline(teacher[0], color="grey", ls=":", label=f"teacher ({teacher[0]:.1f}%)")
        ax.set_title(f"{size:,} training images")
        ax.set_ylabel("test accuracy (%), mean ± sd")
        ax.legend(fontsize=8)
        for row, (metric, label) in enumerate((("accuracy", "Δ accuracy vs ViT (points)"), ("ece", "Δ ECE vs ViT")), 1):
            ax = axes[row][col]
            for k, arm in enumerate(ARMS):
                pts = sorted((r["epochs"], r[f"d_{metric}"], r[f"d_{metric}_low"], r[f"d_{metric}_high"])
                             for r in cell if r["arm"] == arm and r.get(f"d_{metric}") is not None)  # fmt: skip
                if not pts:
                    continue
                x = [p[0] * (1 + 0.06 * (k - 1)) for p in pts]  # side by side, not on top of each other
                y = [p[1] for p in pts]
                lo = [p[1] - p[2] if p[2] is not None else 0.0 for p in pts]
                hi = [p[3] - p[1] if p[3] is not None else 0.0 for p in pts]
                ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=arm, color=COLOURS[arm])
            ax.axhline(0.0, color="black", lw=0.8)
            ax.set_ylabel(f"{label}, 95% CI")
            ax.legend(fontsize=8)
        axes[-1][col].set_xlabel("epochs")
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([3, 10, 30])
        ax.set_xticklabels(["3", "10", "30"])
    fig.suptitle("Distillation from the cached ResNet-20 against the ViT: 3 seeds per point, paired by seed")
    fig.tight_layout()
    save(fig, out)


def main() -> None:
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    rows = read_cells(root)
    if not rows:
        sys.exit(f"no evaluated cell under {root}; run bench/regime/run.sh first.")
    write_table(rows, out.with_suffix(".md"), out.with_suffix(".csv"))
    draw(rows, out)
    print(out.with_suffix(".md").read_text())
    print(f"wrote {out}, {out.with_suffix('.md')} and {out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
