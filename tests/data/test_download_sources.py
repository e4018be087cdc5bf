"""`cdeit data download` of CIFAR-100 (tar.gz) and Tiny-ImageNet (zip) from the local HTTP server of the download
tests: small fake archives in the official layouts, read back by the readers."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.common.errors import CdeitError
from cdeit.data.cifar100 import read_cifar100
from cdeit.data.download import RELEASES, download_datasets
from cdeit.data.tiny_imagenet import read_tiny_imagenet
from tests.data.fakes import write_fake_cifar100, write_fake_tiny_imagenet
from tests.data.test_download import FAST, Behaviour, Handler, md5

pytestmark = pytest.mark.network


def _archives(tmp: Path) -> dict[str, bytes]:
    c100 = write_fake_cifar100(tmp / "c", train_per_class=1, test_per_class=1)
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w:gz") as tar:
        tar.add(c100, arcname="cifar-100-python")
    tiny = write_fake_tiny_imagenet(tmp / "t", classes=2, train=1, val=1)
    zip_buf = io.BytesIO()
    with zipfile.ZipFile(zip_buf, "w") as zf:
        for f in sorted(tiny.rglob("*")):
            zf.write(f, f"tiny-imagenet-200/{f.relative_to(tiny).as_posix()}")
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", b"x")
    return {"/c100.tar.gz": tar_buf.getvalue(), "/tiny.zip": zip_buf.getvalue(), "/evil.zip": evil.getvalue()}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Behaviour]]:
    behaviour = Behaviour(files=_archives(tmp_path / "src"))
    handler = type("BoundHandler", (Handler,), {"behaviour": behaviour})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", behaviour
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_new_releases_have_published_checksums() -> None:
    for key in ("cifar100", "cifar100c", "tiny-imagenet", "tiny-imagenet-c"):
        release = RELEASES[key]
        assert len(release.md5) == 32 and release.url.startswith("http")


def test_cifar100_and_tiny_imagenet_download_extract_and_read(served, tmp_path: Path) -> None:
    base, b = served
    to = tmp_path / "to"
    folders = download_datasets(
        to,
        only=["cifar100", "tiny-imagenet"],
        urls={"cifar100": f"{base}/c100.tar.gz", "tiny-imagenet": f"{base}/tiny.zip"},
        md5s={"cifar100": md5(b.files["/c100.tar.gz"]), "tiny-imagenet": md5(b.files["/tiny.zip"])},
        settings=FAST,
    )
    assert folders["cifar100"] == to / "cifar-100-python"
    assert len(read_cifar100(to).class_names) == 100
    assert read_tiny_imagenet(to).train_images.shape == (2, 64, 64, 3)
    assert not (to / "c100.tar.gz").exists()  # archives deleted after extraction


def test_zip_with_a_path_out_of_the_folder_is_refused(served, tmp_path: Path) -> None:
    base, b = served
    with pytest.raises(CdeitError, match="escape"):
        download_datasets(
            tmp_path,
            only=["tiny-imagenet"],
            urls={"tiny-imagenet": f"{base}/evil.zip"},
            md5s={"tiny-imagenet": md5(b.files["/evil.zip"])},
            settings=FAST,
        )
    assert not (tmp_path.parent / "escape.txt").exists() and not (tmp_path / "tiny-imagenet-200").exists()


def test_cli_takes_url_and_md5_per_dataset(served, tmp_path: Path) -> None:
    base, b = served
    args = ["data", "download", "--to", str(tmp_path), "--only", "cifar100", "--url", f"cifar100={base}/c100.tar.gz"]
    result = CliRunner().invoke(app, [*args, "--md5", f"cifar100={md5(b.files['/c100.tar.gz'])}"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cifar-100-python" / "meta").is_file()
    bad = CliRunner().invoke(app, ["data", "download", "--to", str(tmp_path), "--url", "nope=http://x"])
    assert bad.exit_code == 2 and "--url" in bad.output
