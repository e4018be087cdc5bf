"""`cdeit data download` against a local HTTP server that serves tiny archives with the real layout."""

from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import re
import socket
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.common.errors import CdeitError
from cdeit.data.download import PARTS_DIR, RELEASES, Settings, download_datasets
from cdeit.data.sources import read_cifar10, read_cifar10c

pytestmark = pytest.mark.network

N_PER_BATCH = 10
C_CORRUPTIONS = ("gaussian_noise", "fog")
FAST = Settings(retries=2, timeout_s=5.0, chunk_bytes=4096, backoff_s=0.0)


# ---------------------------------------------------------------- tiny archives with the official layout


def _tar_add(tar: tarfile.TarFile, name: str, payload: bytes | None) -> None:
    info = tarfile.TarInfo(name)
    if payload is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
    else:
        info.size, info.mode = len(payload), 0o644
        tar.addfile(info, io.BytesIO(payload))


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def build_cifar10_archive(rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """cifar-10-python.tar.gz with six 10-image batches and batches.meta; returns (archive, test labels)."""
    buf = io.BytesIO()
    test_labels = np.arange(N_PER_BATCH) % 10
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _tar_add(tar, "cifar-10-batches-py", None)
        for name in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"):
            labels = test_labels if name == "test_batch" else rng.integers(0, 10, N_PER_BATCH)
            batch = {
                b"batch_label": name.encode(),
                b"labels": [int(y) for y in labels],
                b"data": rng.integers(0, 256, (N_PER_BATCH, 3072), dtype=np.uint8),
                b"filenames": [f"{name}_{i}.png".encode() for i in range(N_PER_BATCH)],
            }
            _tar_add(tar, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
        meta = {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
                                 b"ship", b"truck"], b"num_vis": 3072}  # fmt: skip
        _tar_add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
    return buf.getvalue(), test_labels


def build_cifar10c_archive(rng: np.random.Generator, test_labels: np.ndarray) -> bytes:
    """CIFAR-10-C.tar with labels.npy (test labels tiled over 5 severities) and two corruption files."""
    buf = io.BytesIO()
    rows = 5 * len(test_labels)
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _tar_add(tar, "CIFAR-10-C", None)
        _tar_add(tar, "CIFAR-10-C/labels.npy", _npy(np.tile(test_labels, 5).astype(np.uint8)))
        for name in C_CORRUPTIONS:
            _tar_add(tar, f"CIFAR-10-C/{name}.npy", _npy(rng.integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8)))
    return buf.getvalue()


def build_evil_archive() -> bytes:
    """A tar.gz with the right folder plus an entry that climbs out of the extraction directory."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        _tar_add(tar, "cifar-10-batches-py/test_batch", b"x")
        _tar_add(tar, "../escaped.txt", b"gotcha")
    return buf.getvalue()


@pytest.fixture(scope="module")
def archives() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    cifar10, test_labels = build_cifar10_archive(rng)
    return {
        "/cifar-10-python.tar.gz": cifar10,
        "/CIFAR-10-C.tar": build_cifar10c_archive(rng, test_labels),
        "/evil.tar.gz": build_evil_archive(),
    }


# ---------------------------------------------------------------- a Range-aware server that misbehaves on request


@dataclass
class Behaviour:
    """What the server does; `log` records (path, Range header or None, status, bytes of body sent)."""

    files: dict[str, bytes]
    drops: list[float] = field(default_factory=list)  # each of the next responses sends this share, then hangs up
    fail_status: int | None = None
    ignore_range: bool = False
    log: list[tuple[str, str | None, int, int]] = field(default_factory=list)


class Handler(http.server.BaseHTTPRequestHandler):
    behaviour: Behaviour  # set on a per-server subclass
    protocol_version = "HTTP/1.1"
    timeout = 10

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        b, rng = self.behaviour, self.headers.get("Range")
        body = b.files.get(self.path)
        if b.fail_status is not None or body is None:
            status = b.fail_status or 404
            b.log.append((self.path, rng, status, 0))  # logged before the client can see an answer: no race
            self._reply(status, b"oops", {})
            return
        start, status, headers = 0, 200, {}
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and not b.ignore_range:
            start = int(match[1])
            if start >= len(body):
                b.log.append((self.path, rng, 416, 0))
                self._reply(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                return
            status, headers = 206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
        payload = body[start:]
        if b.drops:
            sent = int(len(payload) * b.drops.pop(0))
            b.log.append((self.path, rng, status, sent))
            self._reply(status, payload[:sent], headers, content_length=len(payload))
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        b.log.append((self.path, rng, status, len(payload)))
        self._reply(status, payload, headers)

    def _reply(self, status: int, payload: bytes, headers: dict[str, str], content_length: int | None = None) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload) if content_length is None else content_length))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # keep pytest output clean


@pytest.fixture
def server(archives: dict[str, bytes]) -> Iterator[tuple[str, Behaviour]]:
    """(base URL, behaviour) of a ThreadingHTTPServer on 127.0.0.1 that stops when the test ends."""
    behaviour = Behaviour(files=archives)
    handler = type("BoundHandler", (Handler,), {"behaviour": behaviour})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", behaviour
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def fetch_cifar10(base: str, behaviour: Behaviour, to: Path, **kwargs: object) -> dict[str, Path]:
    body = behaviour.files["/cifar-10-python.tar.gz"]
    return download_datasets(
        to,
        only=["cifar10"],
        urls={"cifar10": f"{base}/cifar-10-python.tar.gz"},
        md5s={"cifar10": kwargs.pop("md5", md5(body))},  # type: ignore[dict-item]
        settings=FAST,
        **kwargs,  # type: ignore[arg-type]
    )


def part_of(to: Path, key: str = "cifar10") -> Path:
    return to / PARTS_DIR / f"{RELEASES[key].archive}.part"


# ---------------------------------------------------------------- tests


def test_clean_download_extracts_both(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base, b = server
    monkeypatch.setenv("CDEIT_PROGRESS", "1")  # exercise the progress bars too
    to = tmp_path / "raw"
    folders = download_datasets(
        to,
        urls={"cifar10": f"{base}/cifar-10-python.tar.gz", "cifar10c": f"{base}/CIFAR-10-C.tar"},
        md5s={"cifar10": md5(b.files["/cifar-10-python.tar.gz"]), "cifar10c": md5(b.files["/CIFAR-10-C.tar"])},
        settings=FAST,
    )
    assert folders == {"cifar10": to / "cifar-10-batches-py", "cifar10c": to / "CIFAR-10-C"}
    cifar = read_cifar10(to)
    assert cifar.train_images.shape == (5 * N_PER_BATCH, 32, 32, 3) and len(cifar.test_labels) == N_PER_BATCH
    arrays, _ = read_cifar10c(to, list(C_CORRUPTIONS), cifar.test_labels)
    assert arrays["fog"].shape == (5 * N_PER_BATCH, 32, 32, 3)
    assert [(path, rng, status) for path, rng, status, _ in b.log] == [
        ("/cifar-10-python.tar.gz", None, 200),
        ("/CIFAR-10-C.tar", None, 200),
    ]
    # archives deleted after extraction, no leftovers under hidden names
    assert sorted(p.name for p in to.iterdir()) == ["CIFAR-10-C", "cifar-10-batches-py"]


def test_keep_archives_keeps_the_verified_archive(server, tmp_path: Path) -> None:
    base, b = server
    fetch_cifar10(base, b, tmp_path, keep_archives=True)
    kept = tmp_path / "cifar-10-python.tar.gz"
    assert kept.read_bytes() == b.files["/cifar-10-python.tar.gz"]
    assert not part_of(tmp_path).exists()


def test_resume_sends_range_and_appends(server, tmp_path: Path) -> None:
    base, b = server
    body = b.files["/cifar-10-python.tar.gz"]
    half = len(body) // 2
    part = part_of(tmp_path)
    part.parent.mkdir()
    part.write_bytes(body[:half])
    fetch_cifar10(base, b, tmp_path)
    assert b.log == [("/cifar-10-python.tar.gz", f"bytes={half}-", 206, len(body) - half)]
    assert len(read_cifar10(tmp_path).test_labels) == N_PER_BATCH
    assert not part.exists()


def test_complete_part_is_not_fetched_again(server, tmp_path: Path) -> None:
    base, b = server
    body = b.files["/cifar-10-python.tar.gz"]
    part = part_of(tmp_path)
    part.parent.mkdir()
    part.write_bytes(body)
    fetch_cifar10(base, b, tmp_path)
    assert [status for *_, status, _ in b.log] == [416]  # asked for the rest, nothing was left
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()


def test_server_ignoring_range_starts_over(server, tmp_path: Path) -> None:
    base, b = server
    b.ignore_range = True
    body = b.files["/cifar-10-python.tar.gz"]
    part = part_of(tmp_path)
    part.parent.mkdir()
    part.write_bytes(b"\0" * (len(body) // 2))  # garbage: appending to it would fail the MD5
    fetch_cifar10(base, b, tmp_path)
    assert [(rng, status) for _, rng, status, _ in b.log] == [(f"bytes={len(body) // 2}-", 200)]
    assert (tmp_path / "cifar-10-batches-py" / "batches.meta").is_file()


def test_dropped_connection_is_resumed(server, tmp_path: Path) -> None:
    base, b = server
    b.drops = [0.5]
    body = b.files["/cifar-10-python.tar.gz"]
    fetch_cifar10(base, b, tmp_path)
    (_, rng0, status0, sent0), (_, rng1, status1, sent1) = b.log
    assert (rng0, status0, sent0) == (None, 200, len(body) // 2)
    assert rng1 is not None and status1 == 206
    assert rng1 == f"bytes={len(body) // 2}-" and sent0 + sent1 == len(body)
    assert len(read_cifar10(tmp_path).train_labels) == 5 * N_PER_BATCH


def test_connection_dropping_every_time_keeps_the_part(server, tmp_path: Path) -> None:
    base, b = server
    b.drops = [0.5] + [0.0] * 10  # half, then hang up at once every time
    with pytest.raises(CdeitError, match=r"partial file .* is kept.*rerunning the same command resumes") as err:
        download_datasets(
            tmp_path,
            only=["cifar10c"],
            urls={"cifar10c": f"{base}/CIFAR-10-C.tar"},
            md5s={"cifar10c": md5(b.files["/CIFAR-10-C.tar"])},
            settings=Settings(retries=2, timeout_s=5.0, chunk_bytes=4096, backoff_s=0.0),
        )
    assert "\n" not in str(err.value) and "3 times in a row" in str(err.value)
    assert len(b.log) == 3  # the first try, then two retries that got nothing
    part = part_of(tmp_path, "cifar10c")
    assert part.stat().st_size == len(b.files["/CIFAR-10-C.tar"]) // 2
    assert part.read_bytes() == b.files["/CIFAR-10-C.tar"][: part.stat().st_size]
    assert not (tmp_path / "CIFAR-10-C").exists()


def test_wrong_md5_deletes_the_part_and_writes_nothing(server, tmp_path: Path) -> None:
    base, b = server
    actual = md5(b.files["/cifar-10-python.tar.gz"])
    with pytest.raises(CdeitError) as err:
        fetch_cifar10(base, b, tmp_path, md5="0" * 32)
    assert actual in str(err.value) and "0" * 32 in str(err.value)
    assert not part_of(tmp_path).exists()
    assert not (tmp_path / "cifar-10-batches-py").exists()
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


def test_official_size_is_checked_without_md5_override(server, tmp_path: Path) -> None:
    base, b = server
    with pytest.raises(CdeitError, match="170,498,071 bytes"):
        download_datasets(tmp_path, only=["cifar10"], urls={"cifar10": f"{base}/cifar-10-python.tar.gz"}, settings=FAST)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_path_traversal_is_refused(server, tmp_path: Path) -> None:
    base, b = server
    to = tmp_path / "raw"
    with pytest.raises(CdeitError, match="refusing to extract"):
        download_datasets(
            to,
            only=["cifar10"],
            urls={"cifar10": f"{base}/evil.tar.gz"},
            md5s={"cifar10": md5(b.files["/evil.tar.gz"])},
            settings=FAST,
        )
    assert not (tmp_path / "escaped.txt").exists()
    assert not (to / "cifar-10-batches-py").exists()
    assert not any(p.name.startswith(".extract") for p in to.iterdir())


def test_existing_complete_dir_is_skipped(server, tmp_path: Path) -> None:
    base, b = server
    final = tmp_path / "cifar-10-batches-py"
    final.mkdir()
    for name in RELEASES["cifar10"].required:
        (final / name).write_bytes(b"mine")
    assert fetch_cifar10(base, b, tmp_path) == {"cifar10": final}
    assert b.log == []
    assert all((final / name).read_bytes() == b"mine" for name in RELEASES["cifar10"].required)


def test_existing_incomplete_dir_is_an_error(server, tmp_path: Path) -> None:
    base, b = server
    (tmp_path / "CIFAR-10-C").mkdir()
    (tmp_path / "CIFAR-10-C" / "labels.npy").write_bytes(b"")
    with pytest.raises(CdeitError, match=r"CIFAR-10-C exists but lacks <corruption>\.npy"):
        download_datasets(tmp_path, only=["cifar10c"], urls={"cifar10c": f"{base}/CIFAR-10-C.tar"}, settings=FAST)
    assert b.log == []


def test_cli_server_error_is_one_sentence_exit_2(server, tmp_path: Path) -> None:
    base, b = server
    b.fail_status = 500
    url = f"{base}/cifar-10-python.tar.gz"
    result = CliRunner().invoke(
        app, ["data", "download", "--to", str(tmp_path), "--only", "cifar10", "--cifar10-url", url]
    )
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert message.startswith("error:") and url in message and "HTTP 500" in message
    assert message.count(". ") == 0 and "Traceback" not in message
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_cli_reads_urls_and_md5s_from_the_environment(server, tmp_path: Path) -> None:
    base, b = server
    env = {
        "CDEIT_CIFAR10_URL": f"{base}/cifar-10-python.tar.gz",
        "CDEIT_CIFAR10_MD5": md5(b.files["/cifar-10-python.tar.gz"]),
        "CDEIT_CIFAR10C_URL": f"{base}/CIFAR-10-C.tar",
        "CDEIT_CIFAR10C_MD5": md5(b.files["/CIFAR-10-C.tar"]),
    }
    result = CliRunner().invoke(app, ["data", "download", "--to", str(tmp_path), "--retries", "0"], env=env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert (tmp_path / "CIFAR-10-C" / "fog.npy").is_file()
    assert len(b.log) == 2
