"""The summary a run prints: teacher accuracy per split and corruption type, then images, seconds and images/s."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cdeit.common.console import console, out

if TYPE_CHECKING:
    from cdeit.common.head import LinearHead
    from cdeit.precompute.job import PrecomputeJob


def report(job: PrecomputeJob, summary: dict[str, Any], head: LinearHead | None) -> None:
    """Print teacher accuracy per split and corruption type, then one line of images, seconds and images/s."""
    manifest, path = summary["manifest"], job.cfg.out
    if head is None:
        have = len(manifest["feature_shards"])
        console.print(
            f"[bold]{path}[/] holds the features of {have} shards (this slice); no head yet. Merge the slices with "
            "`cdeit cache merge ... --out MERGED`, then run this command on MERGED to fit the head and write "
            "the logits."
        )
    elif manifest["splits"]:
        out.print(accuracy_table(manifest))
    if summary.get("accuracy_joined"):
        joined = ", ".join(f"{s} {a:.2%}" for s, a in summary["accuracy_joined"].items())
        out.print(f"clean view: the teacher's accuracy on each split's samples, seeing their clean sources: {joined}")
    rate = f"{summary['images_per_s']:,.1f} images/s" if summary["images"] else "nothing to compute"
    state = "complete" if summary["complete"] else "incomplete"
    who = f"rank 0 of {job.env.world}: " if job.env.world > 1 else ""
    out.print(
        f"{who}{summary['images']:,} images in {summary['features_seconds']:.1f} s ({rate}) on {summary['device']}, "
        f"batch {summary['batch_size']}, {summary['compute_dtype']}; total {summary['seconds']:.1f} s; "
        f"cache {path} is {state}."
    )
    if summary.get("views"):
        views, seconds = summary["views"], summary["views_seconds"]
        rate = views / seconds if seconds else 0.0
        out.print(f"{who}{views:,} augmented views in {seconds:.1f} s ({rate:,.1f} views/s)")
    if job.teacher.random_weights:
        console.print("[bold yellow]the cache holds logits of a teacher with RANDOM WEIGHTS.[/]")


def joined_accuracy(job: PrecomputeJob) -> dict[str, float]:
    """Clean view: per split, how often the teacher is right about a sample when it sees that sample's clean source."""
    from cdeit.common.cache import load_teacher_logits
    from cdeit.common.dataset import beton_path, read_split

    result = {}
    for split in job.data["splits"]:
        logits = load_teacher_logits(job.cfg.out, job.cfg.data, split, "cpu", checksums=False)
        labels = read_split(beton_path(job.cfg.data, split), fields=("label",))["label"]
        result[split] = float((logits.argmax(1).numpy() == labels).mean()) if len(labels) else float("nan")
    return result


def accuracy_table(manifest: dict[str, Any]) -> Any:
    """Teacher accuracy: one row per corruption type (and all), one column per split."""
    from rich.table import Table

    splits = manifest["splits"]
    table = Table(title="teacher accuracy", title_justify="left")
    table.add_column("images")
    for split in splits:
        table.add_column(split, justify="right")
    rows = ["all", *manifest["dataset"]["corruptions"]]
    for row in rows:
        values = [
            splits[s]["accuracy"] if row == "all" else splits[s]["accuracy_by_corruption"].get(row) for s in splits
        ]
        table.add_row(row, *("-" if v is None else f"{v:.2%}" for v in values))
    return table
