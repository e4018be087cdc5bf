"""The dataset contract between `cdeit data prepare` and every later stage.

A dataset directory holds `train.beton`, `val.beton`, `test.beton` and `manifest.json`. Each sample has
the fields `image` (SxSx3 uint8, raw RGB; S is the dataset's `image_size`, 32 for CIFAR), `label`, `corruption`
(0 = clean, 1..10 in CORRUPTIONS order), `severity` (0 for clean, 1..5: SEVERITIES), `index` (its position in the
split) and `source` (the id of the original photograph it was made from: CIFAR-10 train image i is i, test image
i is 50000 + i). Image size and class names are properties of a dataset, recorded in its manifest (`image_size`,
`classes`) and read by `image_size` and `class_names`; a manifest written before `image_size` reads as 32px.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cdeit.common.errors import CdeitError

if TYPE_CHECKING:  # numpy, ffcv and torch are imported lazily: every command's options read this module's names,
    import numpy as np  # and the command line must start fast
    from ffcv.loader import Loader

FORMAT_VERSION = 1
CLASSES = (  # CIFAR-10's names: the classes a dataset written without its own names has
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CORRUPTIONS = (
    "clean",
    "brightness",
    "defocus_blur",
    "zoom_blur",
    "motion_blur",
    "fog",
    "frost",
    "snow",
    "shot_noise",
    "gaussian_noise",
    "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)  # of a corrupted image, mildest first (CIFAR-10-C's five levels)
SEVERITY_CODES = (0, *SEVERITIES)  # every value of the `severity` field: 0 for a clean image
SPLITS = ("train", "val", "test")
DEFAULT_IMAGE_SIZE = 32  # the size of a dataset whose manifest predates `image_size` (every one was CIFAR's 32px)
IMAGE_SHAPE = (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE, 3)  # such a dataset's image shape
MAX_IMAGE_SIZE = 4096  # a manifest's `image_size` above this is damage, not a dataset
INT_FIELDS = ("label", "corruption", "severity", "index", "source")
FIELDS = ("image", *INT_FIELDS)
TEST_SOURCE_OFFSET = 50_000  # source id of CIFAR-10 test image i is TEST_SOURCE_OFFSET + i
MANIFEST = "manifest.json"
SOURCES_FILE = "sources.beton"  # one clean image per source photograph (index = row, `source` = its id)


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """Hash of a split's images and labels in index order: what ties a teacher cache to its data."""
    import numpy as np

    h = hashlib.sha256()
    h.update(f"cdeit-split-v{FORMAT_VERSION}:{images.shape}".encode())
    h.update(np.ascontiguousarray(images, dtype=np.uint8).data)
    h.update(np.ascontiguousarray(labels, dtype="<i8").data)
    return "sha256:" + h.hexdigest()


def beton_path(data_dir: str | os.PathLike, split: str) -> Path:
    return Path(data_dir) / f"{split}.beton"


def load_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check DATA/manifest.json: every key a command reads (presence, type, range) and every file it names
    (a plain `.beton` name inside DATA, no symlink out of it); each problem is one sentence naming file and key."""
    from cdeit.common.atomic import field, read_manifest_json, string_list

    path, manifest = read_manifest_json(data_dir, "a cdeit dataset", "cdeit data prepare")
    name, fix = str(path), "rebuild the dataset with `cdeit data prepare` (or get an intact copy)"
    if not isinstance(manifest.get("splits", {}), dict):
        raise CdeitError(f"{path} has 'splits' that is not an object, so it is not a cdeit dataset manifest; {fix}.")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise CdeitError(
            f"{path} has format version {version!r} but this cdeit reads version {FORMAT_VERSION}; "
            "rebuild the dataset with this version of `cdeit data prepare`."
        )
    string_list(manifest, "classes", name, fix)
    field(manifest, "image_size", int, name, fix, minimum=1, optional=True)
    if manifest.get("image_size", 1) > MAX_IMAGE_SIZE:
        raise CdeitError(f"{path} has 'image_size' {manifest['image_size']}, above {MAX_IMAGE_SIZE}; {fix}.")
    string_list(manifest, "corruptions", name, fix, optional=True)
    types = string_list(manifest, "types", name, fix, optional=True) or []
    if unknown := [t for t in types if t not in CORRUPTIONS]:
        raise CdeitError(f"{path} has 'types' naming {unknown[0]!r}, which is not an image type; {fix}.")
    for split, entry in field(manifest, "splits", dict, name, fix).items():
        _check_entry(Path(data_dir), split, entry, name, fix, f"splits.{split}.")
    if (sources := field(manifest, "source_images", dict, name, fix, optional=True)) is not None:
        _check_entry(Path(data_dir), "sources", sources, name, fix, "source_images.", is_split=False)
    return manifest


def _check_entry(data_dir: Path, split: str, entry: Any, name: str, fix: str, at: str, is_split: bool = True) -> None:
    """One .beton's manifest entry: its keys, and its file `SPLIT.beton` present inside DATA (no symlink out)."""
    from cdeit.common.atomic import field, inside, plain_name

    if not isinstance(entry, dict):
        raise CdeitError(f"{name} has {at.rstrip('.')!r} that is not an object; {fix}.")
    file = plain_name(f"{split}.beton", name, at.rstrip("."), fix, ".beton")
    if field(entry, "file", str, name, fix, at=at, optional=True) not in (None, file):
        raise CdeitError(f"{name} has {at + 'file'!r} = {entry['file']!r}, which should be {file!r}; {fix}.")
    field(entry, "count", int, name, fix, at=at, minimum=0)
    field(entry, "fingerprint", str, name, fix, at=at)
    field(entry, "beton_bytes", int, name, fix, at=at, minimum=0, optional=True)
    field(entry, "beton_sha256", str, name, fix, at=at, optional=True)
    path = inside(data_dir, data_dir / file, name, "the file", fix)
    if is_split:
        field(entry, "distinct_sources", int, name, fix, at=at, minimum=0, optional=True)
    if is_split and not path.is_file():
        raise CdeitError(f"{path} listed in {name} is missing; rebuild the dataset.")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes (what the manifest records for each .beton)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


HASH_CACHE_ENV = "CDEIT_HASH_CACHE"  # file of verified hashes; default ~/.cache/cdeit/verified-betons.json


def _hash_cache_path() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cdeit" / "verified-betons.json"
    return Path(os.environ.get(HASH_CACHE_ENV) or default)


def _file_key(path: Path) -> str:
    """What changes whenever the file's bytes may have: size, mtime, ctime (not settable by users) and inode."""
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def _known_hashes() -> dict[str, Any]:
    """The verified hashes recorded so far (none without a record). A path that holds anything but such a record
    (a user's file that CDEIT_HASH_CACHE names by mistake) is refused, never replaced."""
    path = _hash_cache_path()
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        value = None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise CdeitError(
            f"{path} ({HASH_CACHE_ENV}) is not cdeit's record of verified .beton hashes, and cdeit will not replace "
            f"it; point {HASH_CACHE_ENV} at a new file (or delete this one if it is a damaged record)."
        )
    return value


def _remember_hash(path: Path, key: str, digest: str) -> None:
    """Record a verified hash; a cache that cannot be written only costs a rehash next time."""
    from cdeit.common.atomic import atomic_path

    known = {k: v for k, v in _known_hashes().items() if os.path.exists(k)}  # forget files that are gone
    known[str(path.resolve())] = {"key": key, "sha256": digest}
    cache = _hash_cache_path()
    with contextlib.suppress(OSError, CdeitError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            tmp.write_text(json.dumps(known, sort_keys=True))


def check_betons(
    data_dir: str | os.PathLike, manifest: dict[str, Any], splits: Sequence[str], full: bool = False
) -> None:
    """Check each split's .beton against the checksum the manifest recorded when it was written.

    Cheap by default: the size always, the full sha256 only when the file changed since it was last verified
    (size, mtime, ctime and inode); `full=True` always rehashes (`cdeit cache verify`). A file swapped for
    another dataset's, truncated or edited is refused in one sentence naming it. Datasets written before the
    checksum was recorded are checked by size only.
    """
    data_dir = Path(data_dir)
    for split in splits:
        entry = manifest.get("source_images") if split == "sources" else split_info(manifest, split, data_dir)
        path = data_dir / SOURCES_FILE if split == "sources" else beton_path(data_dir, split)
        if entry is None or not path.is_file():
            raise CdeitError(f"{path} is missing; rebuild the dataset with `cdeit data prepare`.")
        hint = f"it is not the file `cdeit data prepare` wrote into {data_dir}: rebuild the dataset (or restore it)."
        if "beton_bytes" in entry and path.stat().st_size != entry["beton_bytes"]:
            raise CdeitError(f"{path} has {path.stat().st_size:,} bytes, not the {entry['beton_bytes']:,} its manifest "
                             f"records; {hint}")  # fmt: skip
        want = entry.get("beton_sha256")
        if not want:
            continue
        key = _file_key(path)
        known = _known_hashes().get(str(path.resolve()), {})
        if not full and known.get("key") == key and known.get("sha256") == want:
            continue
        if file_sha256(path) != want:
            raise CdeitError(f"{path} does not match the checksum in {data_dir / MANIFEST}; {hint}")
        _remember_hash(path, key, want)


def split_info(manifest: dict[str, Any], split: str, data_dir: str | os.PathLike = "DATA") -> dict[str, Any]:
    """The manifest entry of one split, or a clear error naming the splits that exist."""
    splits = manifest.get("splits", {})
    if split not in splits:
        raise CdeitError(f"dataset {data_dir} has no split {split!r}; it has {', '.join(splits) or 'none'}.")
    return splits[split]


def image_size(manifest: dict[str, Any]) -> int:
    """The side S of the dataset's S x S images: `image_size`, or 32 for a manifest written before it was recorded."""
    return int(manifest.get("image_size", DEFAULT_IMAGE_SIZE))


def class_names(manifest: dict[str, Any]) -> list[str]:
    """The dataset's class names in label order (label i is class_names[i])."""
    return list(manifest["classes"])


def check_arrays(arrays: dict[str, np.ndarray]) -> None:
    """Shapes and dtypes every split must have before it is packed: square uint8 RGB images of any size."""
    import numpy as np

    n = len(arrays["image"])
    shape = arrays["image"].shape
    if arrays["image"].dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or not shape[1]:
        raise ValueError(f"images must be uint8 (N, S, S, 3), got {arrays['image'].dtype} {shape}")
    for f in INT_FIELDS:
        if arrays[f].shape != (n,):
            raise ValueError(f"field {f} must have shape ({n},), got {arrays[f].shape}")
    if not np.array_equal(arrays["index"], np.arange(n)):
        raise ValueError("field index must be 0..N-1 in order")


def make_loader(
    path: str | os.PathLike,
    batch_size: int,
    order: Literal["random", "sequential"] = "sequential",
    device: str = "cpu",
    fields: Sequence[str] = FIELDS,
    drop_last: bool = False,
    distributed: bool = False,
    seed: int = 0,
    workers: int = 2,
    indices: Sequence[int] | None = None,
    batches_ahead: int = 3,
) -> Loader:
    """An FFCV loader over one split: images come as uint8 NCHW tensors on `device`, ints as int64 vectors.

    Each batch is a tuple of the requested fields in FIELDS order (the file's order), whatever order
    `fields` lists them in.

    Output buffers are reused between batches: clone whatever is kept past the next batch.
    """
    import torch
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

    path = Path(path)
    if not path.is_file():
        raise CdeitError(f"{path} does not exist; build the dataset with `cdeit data prepare`.")
    dev = torch.device(device)
    non_blocking = dev.type == "cuda"
    pipelines: dict[str, list | None] = {}
    for name in FIELDS:
        if name not in fields:
            pipelines[name] = None
        elif name == "image":
            pipelines[name] = [SimpleRGBImageDecoder(), ToTensor(), ToDevice(dev, non_blocking), ToTorchImage()]
        else:
            pipelines[name] = [IntDecoder(), ToTensor(), Squeeze(1), ToDevice(dev, non_blocking)]
    _check_readable(path)
    return Loader(
        str(path),
        batch_size=batch_size,
        num_workers=workers,
        order=OrderOption.RANDOM if order == "random" else OrderOption.SEQUENTIAL,
        drop_last=drop_last,
        distributed=distributed,
        seed=seed,
        indices=indices,
        pipelines=pipelines,
        batches_ahead=batches_ahead,
    )


def _check_readable(path: Path) -> None:
    """FFCV's reader on the file's header, metadata and allocation table: one sentence if they are damaged."""
    from ffcv.reader import Reader

    try:
        Reader(str(path))
    except (AssertionError, ValueError, IndexError, KeyError, TypeError, OSError) as exc:  # what FFCV raises
        raise CdeitError(
            f"{path} is not a readable FFCV .beton ({type(exc).__name__}: {str(exc)[:80]}); "
            "it is damaged or truncated: rebuild the dataset with `cdeit data prepare`."
        ) from None


def read_split(
    path: str | os.PathLike, fields: Sequence[str] = FIELDS, batch_size: int = 4096, size: int = DEFAULT_IMAGE_SIZE
) -> dict[str, np.ndarray]:
    """Read a whole split back into numpy arrays in index order (images as (N, S, S, 3) uint8; an empty split's
    images are (0, size, size, 3))."""
    import numpy as np

    loader = make_loader(path, batch_size, "sequential", "cpu", fields=fields)
    chunks: dict[str, list[np.ndarray]] = {f: [] for f in fields}
    for batch in loader:
        for name, value in zip([f for f in FIELDS if f in fields], batch, strict=True):
            arr = value.numpy()
            chunks[name].append(arr.transpose(0, 2, 3, 1).copy() if name == "image" else arr.copy())
    empty = {"image": np.zeros((0, size, size, 3), np.uint8)}
    return {f: np.concatenate(c) if c else empty.get(f, np.zeros(0, np.int64)) for f, c in chunks.items()}


def split_counts(arrays: dict[str, np.ndarray], num_classes: int = len(CLASSES)) -> list[list[int]]:
    """Samples per class x image type (num_classes x 11), as stored in the manifest."""
    import numpy as np

    counts = np.zeros((num_classes, len(CORRUPTIONS)), np.int64)
    np.add.at(counts, (arrays["label"], arrays["corruption"]), 1)
    return counts.tolist()


# --------------------------------------------------------------------------------------------- the manifest written


def beton_entry(
    path: Path, arrays: dict[str, np.ndarray], split: bool = True, num_classes: int = len(CLASSES)
) -> dict[str, Any]:
    """The manifest entry of a written `.beton`: counts and fingerprint from the arrays, size and sha256 of the file.

    A split's entry also counts its distinct photographs and its class x image-type table; `sources.beton`'s
    (`split=False`) does not.
    """
    import numpy as np

    entry: dict[str, Any] = {
        "file": path.name,
        "count": int(len(arrays["image"])),
        "fingerprint": fingerprint(arrays["image"], arrays["label"]),
    }
    if split:
        entry |= {
            "distinct_sources": int(len(np.unique(arrays["source"]))),
            "counts_class_by_type": split_counts(arrays, num_classes),
        }
    return entry | {"beton_bytes": path.stat().st_size, "beton_sha256": file_sha256(path)}


def dataset_manifest(
    meta: dict[str, Any], splits: dict[str, dict[str, Any]], sources: dict[str, Any] | None = None
) -> dict[str, Any]:
    """DATA/manifest.json as `load_manifest` reads it: the names, what the producer knows (`meta`: its `classes` and
    `image_size` among them, CIFAR-10's and 32 when it does not say), the entries."""
    from cdeit.common import __version__

    size = int(meta.get("image_size", DEFAULT_IMAGE_SIZE))
    manifest = {
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "classes": list(CLASSES),
        "corruptions": list(CORRUPTIONS),
        "image_size": size,
        "image_shape": [size, size, 3],
        **meta,
        "splits": splits,
    }
    return manifest | ({"source_images": sources} if sources is not None else {})
