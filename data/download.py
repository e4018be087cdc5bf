"""`cdeit data download`: fetch released archives (CIFAR-10/100, Tiny-ImageNet and their -C sets), resumably.

Layout under the target directory DIR:
    DIR/.downloads/<archive>.part   bytes received so far (kept on interruption; a rerun resumes with HTTP Range)
    DIR/<archive>                   the archive once its size and MD5 are verified (deleted after extraction
                                    unless keep_archives)
    DIR/.extract-<folder>/          a temporary extraction directory, renamed into place when complete
    DIR/cifar-10-batches-py/, DIR/CIFAR-10-C/, ...   the result (each release's `folder`)
Nothing appears under a final name before it is verified.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cdeit.common.console import console, progress_bar
from cdeit.common.errors import CdeitError
from cdeit.data.releases import DEFAULT_KEYS, RELEASES, Release  # noqa: F401  (Release: re-exported)

PARTS_DIR = ".downloads"
CHUNK_BYTES = 1 << 20
USER_AGENT = "cdeit-data-download/0.1"
EXTRACTED_OVER_ARCHIVE = 1.1  # room the extracted files need, as a multiple of the archive size


class _StartOver(Exception):
    """The server's answer cannot continue the partial file, which has been deleted: fetch from byte 0."""


# A dropped or stalled connection: worth resuming. http.client.RemoteDisconnected is a ConnectionResetError.
RETRYABLE = (http.client.IncompleteRead, ConnectionError, TimeoutError, _StartOver)


@dataclass
class Settings:
    """How to fetch: retries per dropped connection, socket timeout, read size, pause between retries."""

    retries: int = 3
    timeout_s: float = 30.0
    chunk_bytes: int = CHUNK_BYTES
    backoff_s: float = 1.0  # doubled after each consecutive failure


def download_datasets(
    to: str | os.PathLike,
    only: Iterable[str] | None = None,
    urls: Mapping[str, str | None] | None = None,
    md5s: Mapping[str, str | None] | None = None,
    keep_archives: bool = False,
    settings: Settings | None = None,
) -> dict[str, Path]:
    """Download, verify and extract each release in `only` (default CIFAR-10 and CIFAR-10-C) into `to`.

    `urls` and `md5s` map a release key to an override. With an MD5 override the expected size is the
    server's Content-Length instead of the official one (for mirrors or test archives of another content).
    """
    to = Path(to)
    keys = list(dict.fromkeys(only or DEFAULT_KEYS))
    if unknown := [k for k in keys if k not in RELEASES]:
        raise CdeitError(f"unknown dataset {unknown[0]!r}; choose from {', '.join(RELEASES)}.")
    urls, md5s, settings = urls or {}, md5s or {}, settings or Settings()
    to.mkdir(parents=True, exist_ok=True)
    return {
        key: fetch_release(RELEASES[key], to, urls.get(key), md5s.get(key), keep_archives, settings) for key in keys
    }


def fetch_release(
    release: Release, to: Path, url: str | None, md5: str | None, keep_archives: bool, settings: Settings
) -> Path:
    """Bring one release to `to/<folder>`: skip it if complete, else download, verify, extract, rename."""
    final = to / release.folder
    if final.exists():
        if final.is_dir() and not (missing := release.missing(final)):
            console.print(f"{release.title}: {final} is already complete; skipping.")
            return final
        what = f"lacks {', '.join(missing)}" if final.is_dir() else "is not a directory"
        raise CdeitError(
            f"{final} exists but {what}; move it away or delete it, then rerun to download {release.title}."
        )
    url = url or release.url
    expected_md5 = _check_md5_text(md5, release) if md5 else release.md5
    expected_size = None if md5 else release.size_bytes  # an MD5 override means another file: trust Content-Length
    archive = to / release.archive
    if archive.is_file():
        console.print(f"{release.title}: using the archive already at {archive}.")
        verify(archive, expected_size, expected_md5, delete_on_mismatch=False)
    else:
        part = to / PARTS_DIR / f"{release.archive}.part"
        part.parent.mkdir(exist_ok=True)
        if expected_size is not None:
            _check_free_space(to, expected_size - _size(part) + int(expected_size * EXTRACTED_OVER_ARCHIVE))
        server_size = fetch(url, part, expected_size, settings, label=release.archive)
        verify(part, expected_size if expected_size is not None else server_size, expected_md5, delete_on_mismatch=True)
        os.replace(part, archive)
        with contextlib.suppress(OSError):
            part.parent.rmdir()  # only if empty
    extract(archive, to, release)
    if not keep_archives:
        archive.unlink()
    console.print(f"{release.title}: ready in {final}.")
    return final


def fetch(url: str, part: Path, expected_size: int | None, settings: Settings, label: str) -> int | None:
    """Stream `url` into `part`, resuming from its current length; return the server's total size if known.

    A dropped connection is retried `settings.retries` times in a row (the count resets when bytes arrive).
    """
    failures = 0
    while True:
        offset = _size(part)
        if expected_size is not None and offset >= expected_size:
            if offset == expected_size:
                return expected_size
            part.unlink()  # longer than the file can be: not a prefix of it
            continue
        try:
            return _transfer(url, part, offset, expected_size, settings, label)
        except RETRYABLE as exc:
            progressed = _size(part) > offset
            failures = 1 if progressed else failures + 1
            reason = _describe(exc)
            if failures > settings.retries:
                kept = (
                    f"the partial file {part} ({_size(part):,} bytes) is kept, so rerunning the same command resumes it"
                    if _size(part)
                    else "check the URL and the network, then rerun"
                )
                times = f"{failures} times in a row" if failures > 1 else "once"
                raise CdeitError(f"downloading {url} failed {times} ({reason}); {kept}.") from None
            console.print(f"[yellow]{label}: {reason}; retrying from byte {_size(part):,}.[/]")
            time.sleep(settings.backoff_s * 2 ** (failures - 1))


def _transfer(
    url: str, part: Path, offset: int, expected_size: int | None, settings: Settings, label: str
) -> int | None:
    """One HTTP request: append from `offset` on 206, start over on 200; raise RETRYABLE if cut short."""
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=settings.timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # nothing left after `offset`: the part may already be complete
            total = _content_range_total(exc.headers.get("Content-Range", ""))
            if total == offset:
                return total
            part.unlink()
            raise _StartOver("the server refused to resume; starting over") from None
        raise CdeitError(f"{url} answered HTTP {exc.code} ({exc.reason}); check the URL or try again later.") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, RETRYABLE):
            raise exc.reason from None
        raise CdeitError(f"could not reach {url} ({exc.reason}); check the URL and the network.") from None
    with response:
        if response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                part.unlink()
                raise _StartOver(f"the server resumed at byte {start}, not {offset}; starting over")
        else:
            if offset:
                console.print(f"[yellow]{label}: the server ignored the resume request; starting over.[/]")
            offset, length = 0, response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        if expected_size is not None and total is not None and total != expected_size:
            raise CdeitError(
                f"{url} serves {total:,} bytes but {label} is {expected_size:,} bytes; check the URL, or give that "
                "file's MD5 (--cifar10-md5 / --cifar10c-md5) if it is meant to differ from the official release."
            )
        received = _stream(response, part, offset, total, settings.chunk_bytes, label)
    if total is not None and offset + received < total:
        raise http.client.IncompleteRead(b"", total - offset - received)
    return total


def _stream(
    response: http.client.HTTPResponse, part: Path, offset: int, total: int | None, chunk: int, label: str
) -> int:
    """Copy the response body to `part` (appending after `offset`) with a progress bar; return bytes written."""
    received = 0
    remaining = None if total is None else total - offset
    description = label + (f" (from {_mb(offset)})" if offset else "")
    bar = progress_bar(description, remaining, unit="bytes")  # type: ignore[arg-type]  # rich accepts total=None
    with open(part, "ab" if offset else "wb") as fh, bar as advance:
        while block := response.read(chunk):
            fh.write(block)
            received += len(block)
            advance(len(block), info=f"{_mb(offset + received)} / {_mb(total) if total is not None else '?'}")
    return received


def verify(path: Path, size: int | None, md5: str, delete_on_mismatch: bool) -> None:
    """Check `path` has `size` bytes (when known) and the MD5 `md5`; on mismatch delete it if asked, then fail."""
    what = (
        "deleted it; rerun to download it again" if delete_on_mismatch else "delete it and rerun to download it again"
    )
    actual_size = _size(path)
    if size is not None and actual_size != size:
        if delete_on_mismatch:
            path.unlink()
        raise CdeitError(f"{path} is {actual_size:,} bytes but should be {size:,}; {what}.")
    actual = md5_file(path, progress=f"checking MD5 of {path.name.removesuffix('.part')}")
    if actual != md5.lower():
        if delete_on_mismatch:
            path.unlink()
        raise CdeitError(f"{path} has MD5 {actual} but {md5.lower()} was expected; {what}.")


def md5_file(path: Path, progress: str | None = None, chunk: int = 1 << 22) -> str:
    """Hex MD5 of a file, read in chunks, with an optional progress bar."""
    digest = hashlib.md5()
    with open(path, "rb") as fh, progress_bar(progress or path.name, _size(path), unit="bytes") as advance:
        while block := fh.read(chunk):
            digest.update(block)
            advance(len(block))
    return digest.hexdigest()


def extract(archive: Path, to: Path, release: Release) -> Path:
    """Extract `archive` into a temporary directory inside `to`, check its layout, rename it to `to/<folder>`."""
    tmp = to / f".extract-{release.folder}"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
    tmp.mkdir()
    try:
        try:
            if archive.name.endswith(".zip"):
                _extract_zip(archive, tmp)
            else:
                _extract_tar(archive, tmp)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise CdeitError(f"{archive} is damaged ({exc}); delete it and rerun to download it again.") from None
        except OSError as exc:
            raise CdeitError(
                f"could not extract {archive} into {tmp} ({exc}); check the space and permissions."
            ) from None
        if missing := release.missing(tmp / release.folder):
            raise CdeitError(
                f"{archive} does not hold {release.folder}/ with {', '.join(missing)}; "
                "delete it and rerun (or check --cifar10-url / --cifar10c-url)."
            )
        os.replace(tmp / release.folder, to / release.folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return to / release.folder


def _extract_tar(archive: Path, tmp: Path) -> None:
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member, archive)
        with progress_bar(f"extracting {archive.name}", sum(m.size for m in members), unit="bytes") as advance:
            for member in members:
                tar.extract(member, tmp, filter="data")
                advance(member.size)


def _extract_zip(archive: Path, tmp: Path) -> None:
    """A zip (Tiny-ImageNet's release), every member checked first as tar members are."""
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for member in members:
            name = member.filename.replace("\\", "/")
            is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
            if is_link or name.startswith("/") or ".." in name.split("/"):
                raise CdeitError(
                    f"{archive} contains {member.filename!r}, which is not a plain file inside the archive's folder; "
                    "refusing to extract it (delete the archive and check the URL)."
                )
        with progress_bar(f"extracting {archive.name}", sum(m.file_size for m in members), unit="bytes") as advance:
            for member in members:
                zf.extract(member, tmp)
                advance(member.file_size)


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse anything but plain files and directories at relative paths: no links, devices or `..`.

    The `data` extraction filter refuses the same; checking every member first means nothing is written at all.
    """
    name = member.name.replace("\\", "/")
    safe = (member.isfile() or member.isdir()) and not name.startswith("/") and ".." not in name.split("/")
    if not safe:
        raise CdeitError(
            f"{archive} contains {member.name!r}, which is not a plain file inside the archive's folder; "
            "refusing to extract it (delete the archive and check the URL)."
        )


def _parse_content_range(value: str) -> tuple[int, int | None]:
    """`bytes START-END/TOTAL` -> (START, TOTAL or None when TOTAL is `*`)."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value)
    if not match:
        raise _StartOver(f"unreadable Content-Range {value!r}")
    return int(match[1]), None if match[2] == "*" else int(match[2])


def _content_range_total(value: str) -> int | None:
    match = re.search(r"/(\d+)\s*$", value)
    return int(match[1]) if match else None


def _check_md5_text(md5: str, release: Release) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise CdeitError(f"{md5!r} is not an MD5 for {release.title}; give 32 hexadecimal digits.")
    return md5.lower()


def _check_free_space(to: Path, needed: int) -> None:
    free = shutil.disk_usage(to).free
    if free < needed:
        raise CdeitError(
            f"{to} has {_mb(free)} free but the download and extraction need about {_mb(needed)}; free some space."
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed early"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionError):
        return f"connection lost ({exc})" if str(exc) else "connection lost"
    return str(exc) or type(exc).__name__


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"
