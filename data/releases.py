"""The released archives `cdeit data download` knows: URL, published MD5 and size, and the folder each extracts to.

Checksums come from the publishers: torchvision's datasets code for CIFAR-10/100, the Zenodo records of
Hendrycks and Dietterich for the -C sets, the CS231n release for Tiny-ImageNet.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CIFAR10_BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")


@dataclass(frozen=True)
class Release:
    """One released archive: where it lives, its checksum and size, and the folder it extracts to."""

    key: str  # as in --only: "cifar10", "cifar10c", "cifar100", "cifar100c", "tiny-imagenet", "tiny-imagenet-c"
    title: str
    archive: str
    url: str
    md5: str
    size_bytes: int | None  # None: the published record gives no size; the server's Content-Length is used
    folder: str
    required: tuple[str, ...]  # files that must be in `folder` after extraction
    corruptions: str = ""  # "npy": at least one `<corruption>.npy`; "dir": at least one corruption folder

    def missing(self, folder: Path) -> list[str]:
        """Names of required files absent from `folder` (a -C set also needs at least one corruption)."""
        missing = [name for name in self.required if not (folder / name).is_file()]
        if self.corruptions == "npy" and not any(p.name != "labels.npy" for p in folder.glob("*.npy")):
            missing.append("<corruption>.npy")
        if self.corruptions == "dir" and not any(p.is_dir() for p in folder.glob("*/1")):
            missing.append("<corruption>/1/")
        return missing


RELEASES: dict[str, Release] = {
    "cifar10": Release(
        key="cifar10",
        title="CIFAR-10",
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        size_bytes=170_498_071,
        folder="cifar-10-batches-py",
        required=(*CIFAR10_BATCHES, "batches.meta"),
    ),
    "cifar10c": Release(
        key="cifar10c",
        title="CIFAR-10-C",
        archive="CIFAR-10-C.tar",
        url="https://zenodo.org/records/2535967/files/CIFAR-10-C.tar",
        md5="56bf5dcef84df0e2308c6dcbcbbd8499",
        size_bytes=2_918_471_680,
        folder="CIFAR-10-C",
        required=("labels.npy",),
        corruptions="npy",
    ),
    "cifar100": Release(  # md5 as torchvision's cifar.py (CIFAR100.tgz_md5)
        key="cifar100",
        title="CIFAR-100",
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        size_bytes=169_001_437,
        folder="cifar-100-python",
        required=("train", "test", "meta"),
    ),
    "cifar100c": Release(  # Zenodo record 3555552 (Hendrycks and Dietterich)
        key="cifar100c",
        title="CIFAR-100-C",
        archive="CIFAR-100-C.tar",
        url="https://zenodo.org/records/3555552/files/CIFAR-100-C.tar",
        md5="11f0ed0f1191edbf9fa23466ae6021d3",
        size_bytes=2_918_473_216,
        folder="CIFAR-100-C",
        required=("labels.npy",),
        corruptions="npy",
    ),
    "tiny-imagenet": Release(  # the CS231n release
        key="tiny-imagenet",
        title="Tiny-ImageNet",
        archive="tiny-imagenet-200.zip",
        url="http://cs231n.stanford.edu/tiny-imagenet-200.zip",
        md5="90528d7ca1a48142e341f4ef8d21d0de",
        size_bytes=248_100_043,
        folder="tiny-imagenet-200",
        required=("wnids.txt", "words.txt", "val/val_annotations.txt"),
    ),
    "tiny-imagenet-c": Release(  # Zenodo record 2536630 (Hendrycks and Dietterich)
        key="tiny-imagenet-c",
        title="Tiny-ImageNet-C",
        archive="Tiny-ImageNet-C.tar",
        url="https://zenodo.org/records/2536630/files/Tiny-ImageNet-C.tar",
        md5="f9c9a9dbdc11469f0b850190f7ad8be1",
        size_bytes=1_794_775_040,
        folder="Tiny-ImageNet-C",
        required=(),
        corruptions="dir",
    ),
}
DEFAULT_KEYS = ("cifar10", "cifar10c")  # what `cdeit data download` fetches without --only
