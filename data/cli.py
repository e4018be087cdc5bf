"""`cdeit data ...`: the data stage's commands (download, prepare, audit, show, synth)."""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated

import typer

from cdeit.common.console import friendly_errors
from cdeit.common.errors import CdeitError
from cdeit.common.options import ConfigOptions, comma_list, defaults
from cdeit.data.config import SPLIT_POLICIES, PrepareConfig

app = typer.Typer(
    help="Build the 11-type dataset (clean + 10 corruptions) into FFCV .beton files.", no_args_is_help=True
)
D = defaults(PrepareConfig)  # the option defaults of `data prepare`: PrepareConfig is their only home


def _triple(text: str) -> tuple[int, int, int]:
    """`--per-class-per-type 4500,200,200` to three integers, or one sentence saying what is wrong."""
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3:
        raise CdeitError(f"--per-class-per-type {text!r} must be three integers TRAIN,VAL,TEST such as 4500,200,200.")
    return parts  # type: ignore[return-value]


def _generate(value: str | None) -> bool:
    """`--corruptions generate` to True (cdeit makes the corruptions), unset to False (read CIFAR-10-C)."""
    if value not in (None, "generate"):
        raise CdeitError(f"--corruptions {value!r} is not supported; the only value is `generate`.")
    return value == "generate"


def _split_policy(value: str) -> str:
    if value not in SPLIT_POLICIES:
        raise CdeitError(f"--split {value!r} is unknown; choose {' or '.join(SPLIT_POLICIES)}.")
    return value


PREPARE_OPTIONS = ConfigOptions(
    PrepareConfig,
    generate=_generate,
    per_class_per_type=_triple,
    split=_split_policy,
    types=lambda text: comma_list(text) or D.types,  # empty: every type
    workers=lambda n: _workers(n),
)


def _workers(value: int) -> int:
    """--workers within 1..max_workers(): 0 would silently become 1, 99999 would fork until the machine stalls."""
    from cdeit.common.device import max_workers

    _at_least_one("workers", value)
    if value > max_workers():
        raise CdeitError(f"--workers {value} is more than {max_workers()} (four per CPU core); choose fewer.")
    return value


def _at_least_one(name: str, value: int) -> int:
    """Refuse a count below 1 in one sentence (0 workers would silently become 1)."""
    if value < 1:
        raise CdeitError(f"--{name} must be at least 1, got {value}.")
    return value


def _non_negative(**values: int) -> None:
    """Refuse a negative --seed (numpy's SeedSequence takes none) in one sentence."""
    from cdeit.common.errors import CdeitError

    for name, value in values.items():
        if value < 0:
            raise CdeitError(f"--{name.replace('_', '-')} must be 0 or more, got {value}.")


@app.command("prepare")
@friendly_errors
@PREPARE_OPTIONS.command
def prepare_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Output dataset directory (betons + manifest.json).")],
    cifar10: Annotated[
        Path | None, typer.Option(help="CIFAR-10 python version: `cifar-10-batches-py/` or its parent.")
    ] = D.cifar10,
    cifar10c: Annotated[Path | None, typer.Option(help="Extracted CIFAR-10-C folder (or its parent).")] = D.cifar10c,
    cifar100: Annotated[
        Path | None, typer.Option(help="CIFAR-100 python version: `cifar-100-python/` or its parent (fine labels).")
    ] = D.cifar100,
    cifar100c: Annotated[Path | None, typer.Option(help="Extracted CIFAR-100-C folder (or its parent).")] = D.cifar100c,
    tiny_imagenet: Annotated[
        Path | None, typer.Option(help="Tiny-ImageNet: `tiny-imagenet-200/` or its parent (64px, 200 classes).")
    ] = D.tiny_imagenet,
    tiny_imagenet_c: Annotated[
        Path | None, typer.Option(help="Extracted Tiny-ImageNet-C folder (or its parent).")
    ] = D.tiny_imagenet_c,
    image_folder: Annotated[
        Path | None,
        typer.Option(
            help="One folder of images per class (torchvision's ImageFolder); train/ and val/ subfolders give the "
            "split. Corruptions are generated."
        ),
    ] = D.image_folder,
    image_size: Annotated[
        int | None,
        typer.Option(help="Resize every image to 32, 64 or 224 px (shorter side, then centre crop; docs/data.md)."),
    ] = D.image_size,
    generate: Annotated[
        str | None,
        typer.Option("--corruptions", help="`generate`: make the ten corruptions with cdeit's own implementation."),
    ] = None,
    per_class_per_type: Annotated[str, typer.Option(help="Images per class per type: TRAIN,VAL,TEST.")] = ",".join(
        map(str, D.per_class_per_type)
    ),
    split: Annotated[
        str, typer.Option(help="grouped: all variants of a photograph in one split; paper: random draw.")
    ] = D.split,
    types: Annotated[str, typer.Option(help="Comma-separated image types to include (default: all eleven).")] = "",
    seed: Annotated[int, typer.Option(help="Seed for the split draw and the generated corruptions.")] = D.seed,
    sources: Annotated[
        str,
        typer.Option(
            help="Which CIFAR-10 photographs may be sources: all (train + test pooled), train, or test (e.g. for a "
            "teacher trained on CIFAR-10 train, which must not see its own training photographs)."
        ),
    ] = D.sources,
    workers: Annotated[int, typer.Option(help="Processes for corruption generation and packing.")] = D.workers,
) -> None:
    """Build train/val/test .beton files with label, corruption, severity, index and source fields."""
    from cdeit.common.console import console
    from cdeit.common.console import out as stdout
    from cdeit.data.prepare import prepare

    cfg = PREPARE_OPTIONS.build(ctx)
    _non_negative(seed=cfg.seed)
    from cdeit.data.inputs import check_options

    check_options(cfg)  # conflicting sources are one sentence before the output folder is locked
    from cdeit.common.lock import output_lock

    with output_lock(cfg.out, "cdeit data prepare"):
        manifest = prepare(cfg)
    if manifest.get("reused"):
        console.print(f"{out} already holds this dataset; nothing to do.")
    for name, info in manifest["splits"].items():
        stdout.print(
            f"{name:5s} {info['count']:>8,d} images  {info['distinct_sources']:>7,d} photographs  "
            f"{info['beton_bytes'] / 2**20:8.1f} MiB  {info['fingerprint'][:23]}"
        )
    stdout.print(f"dataset ready in {out}")


@app.command("audit")
@friendly_errors
def audit_command(
    data: Annotated[Path, typer.Argument(help="Dataset directory.")],
    strict: Annotated[
        bool, typer.Option(help="Exit with status 1 if any photograph is shared between splits.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Report, per split pair, how many source photographs are shared and how many samples they touch."""
    from cdeit.common.console import out as stdout
    from cdeit.data.audit import audit

    report = audit(data)
    if as_json:
        stdout.print_json(json.dumps(report))
    else:
        stdout.print(f"split policy: {report['split_policy']}")
        for s, n in report["distinct_sources"].items():
            stdout.print(f"{s:5s}: {n:,d} distinct source photographs")
        for p in report["pairs"]:
            a, b = p["splits"]
            stdout.print(
                f"{a} / {b}: {p['shared_sources']:,d} shared photographs, "
                f"{p[f'{a}_samples_affected']:.1%} of {a} and {p[f'{b}_samples_affected']:.1%} of {b} samples"
            )
    if strict and any(p["shared_sources"] for p in report["pairs"]):
        raise typer.Exit(1)


@app.command("show")
@friendly_errors
def show_command(
    data: Annotated[Path, typer.Argument(help="Dataset directory.")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("dataset.png"),
    split: Annotated[str, typer.Option(help="Split to draw from.")] = "test",
    severity: Annotated[int, typer.Option(help="Severity shown for the corrupted rows (1..5).")] = 3,
) -> None:
    """Write a PNG grid: rows are the eleven image types, columns the classes."""
    from cdeit.common.atomic import probe_writable
    from cdeit.common.console import out as stdout
    from cdeit.data.audit import show

    if out.is_dir():
        from cdeit.common.errors import CdeitError

        raise CdeitError(f"--out {out} is a folder; give the PNG file to write, e.g. {out / 'dataset.png'}.")
    probe_writable(out.parent)
    stdout.print(f"wrote {show(data, out, split, severity)}")


@app.command("synth")
@friendly_errors
def synth_command(
    to: Annotated[Path, typer.Option(help="Directory that receives `cifar-10-batches-py/`.")],
    train_per_class: Annotated[int, typer.Option(help="Train images per class.")] = 600,
    test_per_class: Annotated[int, typer.Option(help="Test images per class.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the procedural images.")] = 0,
) -> None:
    """Write procedural 10-class images in the official CIFAR-10 layout (the offline default)."""
    from cdeit.common.console import out as stdout
    from cdeit.common.errors import CdeitError
    from cdeit.data.synthetic import write_synthetic_cifar

    if train_per_class < 1 or test_per_class < 0:
        raise CdeitError("--train-per-class must be at least 1 and --test-per-class at least 0.")
    _non_negative(seed=seed)
    from cdeit.common.atomic import probe_writable

    probe_writable(to)
    stdout.print(f"wrote {write_synthetic_cifar(to, train_per_class, test_per_class, seed)}")


class Only(str, enum.Enum):
    cifar10 = "cifar10"
    cifar10c = "cifar10c"
    cifar100 = "cifar100"
    cifar100c = "cifar100c"
    tiny_imagenet = "tiny-imagenet"
    tiny_imagenet_c = "tiny-imagenet-c"


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    """`--url KEY=VALUE` (repeatable) to a dict, or one sentence naming the bad value."""
    out = {}
    for text in values or []:
        key, sep, value = text.partition("=")
        if not sep or key not in {o.value for o in Only} or not value:
            keys = ", ".join(o.value for o in Only)
            raise CdeitError(f"{option} {text!r} must be KEY=VALUE with KEY one of {keys}.")
        out[key] = value
    return out


@app.command("download")
@friendly_errors
def download(
    to: Annotated[Path, typer.Option("--to", help="Directory that receives cifar-10-batches-py/, CIFAR-10-C/, ...")],
    only: Annotated[
        list[Only] | None,
        typer.Option("--only", help="Fetch this dataset (repeatable; default: cifar10 and cifar10c)."),
    ] = None,
    keep_archives: Annotated[
        bool, typer.Option("--keep-archives", help="Keep the verified .tar.gz / .tar next to the folders.")
    ] = False,
    cifar10_url: Annotated[
        str | None, typer.Option("--cifar10-url", envvar="CDEIT_CIFAR10_URL", help="Mirror of cifar-10-python.tar.gz.")
    ] = None,
    cifar10c_url: Annotated[
        str | None, typer.Option("--cifar10c-url", envvar="CDEIT_CIFAR10C_URL", help="Mirror of CIFAR-10-C.tar.")
    ] = None,
    cifar10_md5: Annotated[
        str | None,
        typer.Option(
            "--cifar10-md5",
            envvar="CDEIT_CIFAR10_MD5",
            help="Expected MD5 instead of the official one (size from server).",
        ),
    ] = None,
    cifar10c_md5: Annotated[
        str | None,
        typer.Option(
            "--cifar10c-md5",
            envvar="CDEIT_CIFAR10C_MD5",
            help="Expected MD5 instead of the official one (size from server).",
        ),
    ] = None,
    url: Annotated[
        list[str] | None, typer.Option("--url", help="KEY=URL: a mirror for one dataset (repeatable).")
    ] = None,
    md5: Annotated[
        list[str] | None, typer.Option("--md5", help="KEY=MD5: expected MD5 instead of the published one.")
    ] = None,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Resume attempts per dropped connection.")] = 3,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds without data before a retry.")] = 30.0,
) -> None:
    """Download CIFAR-10 and CIFAR-10-C (or the --only datasets), resuming partial downloads; verify; extract."""
    from cdeit.common.console import out
    from cdeit.common.lock import output_lock
    from cdeit.data.download import Settings, download_datasets

    with output_lock(to, "cdeit data download"):
        folders = download_datasets(
            to,
            only=[o.value for o in only] if only else None,
            urls={"cifar10": cifar10_url, "cifar10c": cifar10c_url} | _pairs(url, "--url"),
            md5s={"cifar10": cifar10_md5, "cifar10c": cifar10c_md5} | _pairs(md5, "--md5"),
            keep_archives=keep_archives,
            settings=Settings(retries=retries, timeout_s=timeout),
        )
    for folder in folders.values():
        out.print(str(folder))


def register(root: typer.Typer) -> None:
    """Entry point `cdeit.commands:data`: adds the `cdeit data` group to the root app."""
    root.add_typer(app, name="data")
