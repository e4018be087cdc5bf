"""`cdeit data download`: a thin typer layer over `data.download.download_datasets`."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from common.console import friendly_errors


class Only(str, enum.Enum):
    cifar10 = "cifar10"
    cifar10c = "cifar10c"


@friendly_errors
def download(
    to: Annotated[Path, typer.Option("--to", help="Directory that receives cifar-10-batches-py/ and CIFAR-10-C/.")],
    only: Annotated[Only | None, typer.Option("--only", help="Fetch one dataset only (default: both).")] = None,
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
    retries: Annotated[int, typer.Option("--retries", min=0, help="Resume attempts per dropped connection.")] = 3,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds without data before a retry.")] = 30.0,
) -> None:
    """Download CIFAR-10 and CIFAR-10-C, resuming partial downloads; verify size and MD5; extract."""
    from common.console import out
    from data.download import Settings, download_datasets

    folders = download_datasets(
        to,
        only=[only.value] if only else None,
        urls={"cifar10": cifar10_url, "cifar10c": cifar10c_url},
        md5s={"cifar10": cifar10_md5, "cifar10c": cifar10c_md5},
        keep_archives=keep_archives,
        settings=Settings(retries=retries, timeout_s=timeout),
    )
    for folder in folders.values():
        out.print(str(folder))
