"""The table of bad inputs: one case per distinct error path of every command (missing / empty / truncated /
garbage / mismatched inputs, out-of-range and wrong-type options, read-only and full outputs, hand-edited
manifests, swapped files).

A path is the check that refuses the input: two bad values refused by the same check (the same `raise` in the
product, or the same entry of `cache verify`'s problem list, or the same kind of typer usage error) are one
path, so the table keeps one of them; a value refused by another branch or module is another case. Each case
says how to build its inputs in a fresh folder, the command line, and the names (file, option, key, PID) the
message must hold. `python -m tests.reliability.audit` runs the table and prints the counts docs/reliability.md
reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tests.reliability.runner import Case
from tests.reliability.world import CACHE_ARGS, TINY, TRAIN_ARGS, World

W = World


# --------------------------------------------------------------------------------------------- building blocks


def copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return dst


def garbage(path: Path, content: bytes = b"this is not what you think it is\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def edit_json(path: Path, change: Callable[[Any], Any]) -> Path:
    value = json.loads(path.read_text())
    new = change(value)
    path.write_text(json.dumps(value if new is None else new, indent=2))
    return path


def flip_byte(path: Path, at: float = 0.5) -> Path:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold `folder`'s output lock as 'another writer' (flock is per open file: this conflicts in-process too)."""
    from cdeit.common.lock import output_lock

    with output_lock(folder, "cdeit test-holder"):
        yield


def first_shard(cache: Path) -> Path:
    return sorted(cache.glob("train-*.h5"))[0]


def bomb_png(path: Path) -> Path:
    """A tiny PNG that decodes to 20000 x 20000 pixels (above Pillow's decompression-bomb limit)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    w = h = 20000
    raw = zlib.compress(b"\x00" * (w // 8 + 1) * 64, 9)  # a few rows only: decoding would fail, opening must refuse
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


def save_nan_head(cache: Path, out: Path) -> Path:
    """The cache's fitted head with one NaN weight (same metadata, so only the values are wrong)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(cache / "head.safetensors"), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["weight"][0, 0] = float("nan")
    save_file(tensors, str(out), metadata=meta)
    return out


def other_checkpoint(w: World, d: Path) -> Path:
    """A copy of the run whose checkpoints/last.pt holds another student (a DeiT with other sizes)."""
    import torch

    from cdeit.train.core.models import build_student

    run = copy(w.run, d / "run")
    edit_json(run / "config.json", lambda c: c.update(out=str(run)))  # the run as if trained here
    payload = torch.load(run / "checkpoints/last.pt", weights_only=True)
    payload["model"] = build_student("deit", depth=2, embed_dim=48, num_heads=2).state_dict()
    torch.save(payload, run / "checkpoints/last.pt")
    (run / "model.safetensors").unlink()  # an unfinished run: --resume loads the checkpoint
    return run


def hostile_model(w: World, d: Path) -> Path:
    """The exported model with metadata naming another timm model and a pretrained file."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(w.model), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    config = {"model_name": "vit_tiny_patch16_224", "kwargs": {"pretrained": True,
              "pretrained_cfg_overlay": {"file": str(d / "evil.pth")}}}  # fmt: skip
    save_file(
        tensors, str(d / "hostile.safetensors"), metadata={"format": "pt", "cdeit.model_config": json.dumps(config)}
    )
    return d / "hostile.safetensors"


def hostile_run(w: World, d: Path) -> Path:
    run = copy(w.run, d / "run")
    shutil.copy2(hostile_model(w, d), run / "model.safetensors")
    return run


def cifar10c(w: World, d: Path, names: tuple[str, ...] = ("brightness",), rows: int | None = None) -> Path:
    """A CIFAR-10-C folder for the world's CIFAR-10 test set (5 severities per image)."""
    from cdeit.data.sources import read_cifar10
    from tests.conftest import write_fake_cifar10c

    c10 = read_cifar10(w.cifar)
    root = write_fake_cifar10c(d / "c10c", c10.test_images, c10.test_labels, list(names))
    if rows is not None:
        for name in names:
            np.save(root / f"{name}.npy", np.load(root / f"{name}.npy")[:rows])
    return root


def swapped_beton(w: World, d: Path) -> Path:
    """The dataset with train.beton replaced by the other dataset's (same counts, other images)."""
    data = copy(w.data, d / "data")
    shutil.copy2(w.data2 / "train.beton", data / "train.beton")
    return data


def edited_cache_fingerprint(w: World, d: Path) -> Path:
    """The other data's cache with its manifest's fingerprints edited to claim `data`'s."""
    cache = copy(w.cache2, d / "cache")
    data_manifest = json.loads((w.data / "manifest.json").read_text())

    def change(m: dict) -> None:
        for split, info in m["splits"].items():
            info["fingerprint"] = data_manifest["splits"][split]["fingerprint"]

    edit_json(cache / "manifest.json", change)
    return cache


# --------------------------------------------------------------------------------------------- the table

CASES: list[Case] = []


def case(id: str, argv: Callable[[W, Path], list], names: Callable[[W, Path], list] | list, **kw: Any) -> None:
    names_fn = names if callable(names) else (lambda w, d, n=names: n)
    CASES.append(Case(id, argv, names_fn, **kw))


def prep(*extra: Any) -> Callable[[W, Path], list]:
    return lambda w, d: ["data", "prepare", "--cifar10", w.cifar, "--out", d / "out", "--corruptions", "generate",
                         "--per-class-per-type", "2,1,1", "--types", "clean,brightness", "--workers", "1",
                         *extra]  # fmt: skip


# ---- data prepare
case("prepare/cifar10 missing", lambda w, d: ["data", "prepare", "--cifar10", d / "nope", "--out", d / "out",
     "--corruptions", "generate"], lambda w, d: [d / "nope"])  # fmt: skip
case("prepare/cifar10 empty folder", lambda w, d: ["data", "prepare", "--cifar10", d / "empty", "--out", d / "out",
     "--corruptions", "generate"], lambda w, d: [d / "empty"], setup=lambda w, d: (d / "empty").mkdir())  # fmt: skip
case(
    "prepare/cifar10 garbage batch",
    lambda w, d: ["data", "prepare", "--cifar10", d / "c", "--out", d / "out", "--corruptions", "generate"],
    lambda w, d: ["data_batch_1"],
    setup=lambda w, d: garbage(copy(w.cifar, d / "c") / "cifar-10-batches-py" / "data_batch_1"),
)
case(
    "prepare/cifar10 garbage meta",
    lambda w, d: prep()(w, d) + ["--cifar10", d / "c"],
    ["batches.meta"],
    setup=lambda w, d: garbage(copy(w.cifar, d / "c") / "cifar-10-batches-py" / "batches.meta"),
)
case(
    "prepare/neither c10c nor generate",
    lambda w, d: ["data", "prepare", "--cifar10", w.cifar, "--out", d / "out"],
    ["--cifar10c", "--corruptions"],
)
case("prepare/--corruptions bogus", lambda w, d: ["data", "prepare", "--cifar10", w.cifar, "--out", d / "out",
     "--corruptions", "download"], ["--corruptions"])  # fmt: skip
case("prepare/--split bogus", prep("--split", "random"), ["--split"])
case("prepare/--per-class-per-type letters", prep("--per-class-per-type", "a,b,c"), ["--per-class-per-type"])
case("prepare/--per-class-per-type negative", prep("--per-class-per-type", "2,-1,1"), ["--per-class-per-type"])
case("prepare/--per-class-per-type too many", prep("--per-class-per-type", "500,1,1"), ["--per-class-per-type"])
case("prepare/--types unknown", prep("--types", "clean,rain"), ["rain"])
case("prepare/--types twice", prep("--types", "clean,clean"), ["clean"])
case("prepare/--seed negative", prep("--seed", "-1"), ["--seed"])
case("prepare/--workers zero", prep("--workers", "0"), ["--workers"])
case(
    "prepare/out is a file",
    lambda w, d: prep()(w, d)[:-2] + ["--workers", "1", "--out", d / "f"],
    lambda w, d: [d / "f"],
    setup=lambda w, d: garbage(d / "f"),
)
case("prepare/out holds other files", prep(), lambda w, d: [d / "out"], setup=lambda w, d: garbage(d / "out" / "x"))
case("prepare/out holds another dataset", prep(), lambda w, d: [d / "out"], setup=lambda w, d: copy(w.data, d / "out"))
case(
    "prepare/out holds a garbage manifest",
    prep(),
    lambda w, d: ["manifest.json"],
    setup=lambda w, d: garbage(d / "out" / "manifest.json"),
)
case(
    "prepare/out read-only",
    lambda w, d: prep()(w, d) + ["--out", w.readonly / "out"],
    lambda w, d: [w.readonly / "out"],
    needs="readonly",
)
case(
    "prepare/out on a full disk",
    lambda w, d: prep()(w, d) + ["--out", w.full / "out"],
    lambda w, d: [w.full / "out"],
    needs="full",
)
case("prepare/cifar10c lacks a corruption", lambda w, d: ["data", "prepare", "--cifar10", w.cifar, "--out",
     d / "out", "--cifar10c", d / "c10c", "--types", "clean,fog", "--per-class-per-type", "2,1,1"],
     ["fog"], setup=lambda w, d: cifar10c(w, d))  # fmt: skip
case("prepare/cifar10c truncated rows", lambda w, d: ["data", "prepare", "--cifar10", w.cifar, "--out", d / "out",
     "--cifar10c", d / "c10c", "--types", "clean,brightness", "--per-class-per-type", "2,1,1"],
     ["brightness"], setup=lambda w, d: cifar10c(w, d, rows=7))  # fmt: skip
case("prepare/cifar10c garbage npy", lambda w, d: ["data", "prepare", "--cifar10", w.cifar, "--out", d / "out",
     "--cifar10c", d / "c10c", "--types", "clean,brightness", "--per-class-per-type", "2,1,1"],
     ["brightness"], setup=lambda w, d: garbage(cifar10c(w, d) / "brightness.npy"))  # fmt: skip
case("prepare/cifar10c wrong labels", lambda w, d: ["data", "prepare", "--cifar10", w.cifar, "--out", d / "out",
     "--cifar10c", d / "c10c", "--types", "clean,brightness", "--per-class-per-type", "2,1,1"],
     ["labels.npy"], setup=lambda w, d: np.save(cifar10c(w, d) / "labels.npy",
                                            (np.load(cifar10c(w, d) / "labels.npy") + 1) % 10))  # fmt: skip

# ---- data audit / show / synth
case("audit/missing folder", lambda w, d: ["data", "audit", d / "nope"], lambda w, d: [d / "nope"])
case("audit/no manifest", lambda w, d: ["data", "audit", d], lambda w, d: ["manifest.json"])
case(
    "audit/manifest not an object",
    lambda w, d: ["data", "audit", d / "data"],
    ["manifest.json"],
    setup=lambda w, d: garbage(copy(w.data, d / "data") / "manifest.json", b"[1, 2, 3]"),
)
case(
    "audit/manifest of another version",
    lambda w, d: ["data", "audit", d / "data"],
    ["manifest.json"],
    setup=lambda w, d: edit_json(copy(w.data, d / "data") / "manifest.json", lambda m: m.update(format_version=99)),
)
case(
    "audit/beton missing",
    lambda w, d: ["data", "audit", d / "data"],
    ["val.beton"],
    setup=lambda w, d: (copy(w.data, d / "data") / "val.beton").unlink(),
)
case(
    "audit/beton garbage",
    lambda w, d: ["data", "audit", d / "data"],
    ["train.beton"],
    setup=lambda w, d: garbage(copy(w.data, d / "data") / "train.beton"),
)
case("show/severity 0", lambda w, d: ["data", "show", w.data, "--out", d / "x.png", "--severity", "0"], ["--severity"])
case("show/unknown split", lambda w, d: ["data", "show", w.data, "--out", d / "x.png", "--split", "dev"], ["dev"])
case("show/out is a folder", lambda w, d: ["data", "show", w.data, "--out", d], lambda w, d: [d])
case(
    "show/out read-only",
    lambda w, d: ["data", "show", w.data, "--out", w.readonly / "x.png"],
    lambda w, d: [w.readonly],
    needs="readonly",
)
case(
    "synth/train-per-class 0",
    lambda w, d: ["data", "synth", "--to", d / "s", "--train-per-class", "0"],
    ["--train-per-class"],
)
case(
    "synth/to is a file",
    lambda w, d: ["data", "synth", "--to", d / "f", "--train-per-class", "1"],
    lambda w, d: [d / "f"],
    setup=lambda w, d: garbage(d / "f"),
)

# ---- data download (a closed local port: no network is ever reached)
DL = ["--retries", "0", "--timeout", "1", "--cifar10-url", "http://127.0.0.1:9/cifar-10-python.tar.gz",
      "--cifar10c-url", "http://127.0.0.1:9/CIFAR-10-C.tar"]  # fmt: skip
case(
    "download/server unreachable",
    lambda w, d: ["data", "download", "--to", d / "dl", "--only", "cifar10", *DL],
    ["127.0.0.1"],
)
case("download/--only bogus", lambda w, d: ["data", "download", "--to", d / "dl", "--only", "mnist", *DL], ["--only"])


# ---- precompute-teacher
def pre(*extra: Any, data: Callable[[W, Path], Path] | None = None, random: bool = True) -> Callable[[W, Path], list]:
    args = CACHE_ARGS if random else [a for a in CACHE_ARGS if a != "--random-weights"]
    return lambda w, d: ["precompute-teacher", "--data", data(w, d) if data else w.data, "--out", d / "cache",
                         *args, *extra]  # fmt: skip


case(
    "precompute/data beton garbage",
    pre(data=lambda w, d: d / "data"),
    ["train.beton"],
    setup=lambda w, d: garbage(copy(w.data, d / "data") / "train.beton"),
)
case(
    "precompute/out holds other files",
    pre(),
    lambda w, d: [d / "cache"],
    setup=lambda w, d: garbage(d / "cache" / "notes.txt"),
)
case(
    "precompute/out holds another data's cache",
    pre(),
    lambda w, d: [d / "cache"],
    setup=lambda w, d: copy(w.cache2, d / "cache"),
)
case(
    "precompute/out holds another teacher's cache",
    pre("--seed", "1"),
    lambda w, d: [d / "cache"],
    setup=lambda w, d: copy(w.cache, d / "cache"),
)
case(
    "precompute/out on a full disk",
    lambda w, d: pre()(w, d) + ["--out", w.full / "c"],
    lambda w, d: [w.full],
    needs="full",
)
case("precompute/--teacher unknown", pre("--teacher", "no_such_model_xyz"), ["no_such_model_xyz"])
case("precompute/--checkpoint missing", pre("--checkpoint", "nope.pth", random=False), ["nope.pth"])
case("precompute/--checkpoint with --random-weights", pre("--checkpoint", "w.pth"), ["--random-weights"])
case(
    "precompute/--checkpoint of a student",
    lambda w, d: pre("--checkpoint", w.model, random=False)(w, d),
    lambda w, d: [w.model],
)
case(
    "precompute/--checkpoint garbage",
    lambda w, d: pre("--checkpoint", d / "w.pth", random=False)(w, d),
    ["w.pth"],
    setup=lambda w, d: garbage(d / "w.pth"),
)
case(
    "precompute/--checkpoint garbage safetensors",
    lambda w, d: pre("--checkpoint", d / "w.safetensors", random=False)(w, d),
    ["w.safetensors"],
    setup=lambda w, d: garbage(d / "w.safetensors"),
)
case("precompute/--head missing", pre("--head", "nohead.safetensors"), ["nohead.safetensors"])
case(
    "precompute/--head garbage",
    lambda w, d: pre("--head", d / "h.safetensors")(w, d),
    ["h.safetensors"],
    setup=lambda w, d: garbage(d / "h.safetensors"),
)
case(
    "precompute/--head with NaN",
    lambda w, d: pre("--head", d / "nan.safetensors")(w, d),
    ["nan.safetensors"],
    setup=lambda w, d: save_nan_head(w.cache, d / "nan.safetensors"),
)
case("precompute/--head of another teacher", lambda w, d: pre("--head", w.cache / "head.safetensors", "--seed", "3")(
     w, d), ["head.safetensors"])  # fmt: skip
case("precompute/--batch-size 0", pre("--batch-size", "0"), ["--batch-size"])
case("precompute/--shard-size not a multiple", pre("--shard-size", "48"), ["--shard-size"])
case("precompute/--num-shards 0", pre("--num-shards", "0"), ["--num-shards"])
case("precompute/--head-epochs 0", pre("--head-epochs", "0"), ["--head-epochs"])
case("precompute/--head-lr 0", pre("--head-lr", "0"), ["--head-lr"])
case("precompute/--splits empty", pre("--splits", ","), ["--splits"])
case("precompute/--splits without val", pre("--splits", "train"), ["--splits"])
case("precompute/--view unknown", pre("--view", "blurry"), ["--view"])
case("precompute/--targets unknown", pre("--targets", "logits,saliency"), ["saliency"])
case("precompute/--targets without logits", pre("--targets", "embedding"), ["--targets"])
case("precompute/--view clean without sources", pre("--view", "clean"), ["sources.beton"])
case("precompute/--device unknown", pre("--device", "tpu"), ["tpu"])
case("precompute/--device cuda without one", pre("--device", "cuda:7"), ["cuda"])

# ---- cache info / verify / merge
case("info/manifest of a dataset", lambda w, d: ["cache", "info", w.data], ["manifest.json"])
case(
    "info/manifest splits a list",
    lambda w, d: ["cache", "info", d / "c"],
    ["manifest.json"],
    setup=lambda w, d: edit_json(copy(w.cache, d / "c") / "manifest.json", lambda m: m.update(splits=[1])),
)
case(
    "info/manifest other version",
    lambda w, d: ["cache", "info", d / "c"],
    ["manifest.json"],
    setup=lambda w, d: edit_json(copy(w.cache, d / "c") / "manifest.json", lambda m: m.update(format_version=9)),
)
case("verify/missing", lambda w, d: ["cache", "verify", d / "nope"], lambda w, d: [d / "nope"])
case(
    "verify/manifest without shards",
    lambda w, d: ["cache", "verify", d / "c"],
    ["manifest.json"],
    setup=lambda w, d: edit_json(copy(w.cache, d / "c") / "manifest.json", lambda m: m.pop("shards")),
)
case(
    "verify/shard flipped byte",
    lambda w, d: ["cache", "verify", d / "c"],
    ["train-00000.h5"],
    setup=lambda w, d: flip_byte(first_shard(copy(w.cache, d / "c"))),
)
case(
    "verify/shard garbage",
    lambda w, d: ["cache", "verify", d / "c"],
    ["train-00000.h5"],
    setup=lambda w, d: garbage(first_shard(copy(w.cache, d / "c"))),
)
case(
    "verify/shard missing",
    lambda w, d: ["cache", "verify", d / "c"],
    ["train-00001.h5"],
    setup=lambda w, d: (copy(w.cache, d / "c") / "train-00001.h5").unlink(),
)
case(
    "verify/head missing",
    lambda w, d: ["cache", "verify", d / "c"],
    ["head.safetensors"],
    setup=lambda w, d: (copy(w.cache, d / "c") / "head.safetensors").unlink(),
)
case("verify/--data of other images", lambda w, d: ["cache", "verify", w.cache, "--data", w.data2],
     lambda w, d: [w.data2])  # fmt: skip
case(
    "verify/--data missing", lambda w, d: ["cache", "verify", w.cache, "--data", d / "nope"], lambda w, d: [d / "nope"]
)
case(
    "verify/--data with a swapped beton",
    lambda w, d: ["cache", "verify", w.cache, "--data", d / "data"],
    ["train.beton"],
    setup=swapped_beton,
)
case(
    "verify/edited fingerprints",
    lambda w, d: ["cache", "verify", d / "cache", "--data", w.data],
    ["fingerprint"],
    setup=edited_cache_fingerprint,
)
case("merge/no caches", lambda w, d: ["cache", "merge", "--out", d / "m"], ["caches"])
case(
    "merge/out is a source",
    lambda w, d: ["cache", "merge", d / "c", "--out", d / "c"],
    lambda w, d: [d / "c"],
    setup=lambda w, d: copy(w.cache, d / "c"),
)
case(
    "merge/source with a damaged shard",
    lambda w, d: ["cache", "merge", w.cache2, d / "c", "--out", d / "m"],
    lambda w, d: [d / "c"],
    setup=lambda w, d: flip_byte(first_shard(copy(w.cache, d / "c"))),
)
case(
    "merge/second half damaged (nothing left half-merged)",
    lambda w, d: ["cache", "merge", d / "c", "--out", d / "m"],
    lambda w, d: [d / "c" / "val-00000.h5"],
    setup=lambda w, d: flip_byte(copy(w.cache, d / "c") / "val-00000.h5"),
)


# ---- train
def tr(*extra: Any, data: Callable[[W, Path], Path] | None = None) -> Callable[[W, Path], list]:
    return lambda w, d: ["train", "--data", data(w, d) if data else w.data, "--out", d / "run", *TRAIN_ARGS, *extra]


def soft(cache: Callable[[W, Path], Path]) -> Callable[[W, Path], list]:
    return lambda w, d: tr("--student", "deit", "--distill", "soft", "--teacher-cache", cache(w, d))(w, d)


case("train/--student unknown", tr("--student", "resnet"), ["--student"])
case("train/--distill unknown", tr("--distill", "medium"), ["--distill"])
case("train/--head-strategy on vit", tr("--head-strategy", "mlp"), ["--head-strategy"])
case("train/--head-strategy unknown", tr("--student", "cdeit", "--head-strategy", "deep"), ["--head-strategy"])
case("train/distill without cache", tr("--student", "deit", "--distill", "hard"), ["--teacher-cache"])
case("train/cache of other data", soft(lambda w, d: w.cache2), lambda w, d: [w.cache2])
case(
    "train/cache with edited fingerprints",
    soft(lambda w, d: d / "cache"),
    lambda w, d: [d / "cache"],
    setup=edited_cache_fingerprint,
)
case(
    "train/cache with a flipped shard byte",
    soft(lambda w, d: d / "c"),
    ["train-00000.h5"],
    setup=lambda w, d: flip_byte(first_shard(copy(w.cache, d / "c"))),
)
case(
    "train/cache shard missing",
    soft(lambda w, d: d / "c"),
    ["train-00001.h5"],
    setup=lambda w, d: (copy(w.cache, d / "c") / "train-00001.h5").unlink(),
)
case(
    "train/swapped train.beton",
    lambda w, d: soft(lambda w, d: w.cache)(w, d) + ["--data", d / "data"],
    ["train.beton"],
    setup=swapped_beton,
)
case("train/--model-kwargs not JSON", tr("--model-kwargs", "{depth: 2"), ["--model-kwargs"])
case("train/--model-kwargs unknown key", tr("--model-kwargs", '{"depht": 2}'), ["depht"])
case("train/--model-kwargs wrong type", tr("--model-kwargs", '{"depth": "two"}'), ["depth"])
case(
    "train/--model-kwargs heads do not divide",
    tr("--model-kwargs", '{"depth": 1, "embed_dim": 32, "num_heads": 3}'),
    ["num_heads"],
)
case(
    "train/--config garbage",
    lambda w, d: tr("--config", d / "c.json")(w, d),
    ["c.json"],
    setup=lambda w, d: garbage(d / "c.json"),
)
case(
    "train/--config unknown keys",
    lambda w, d: tr("--config", d / "c.json")(w, d),
    ["c.json"],
    setup=lambda w, d: garbage(d / "c.json", b'{"learning_rate": 1}'),
)
case(
    "train/--config not an object",
    lambda w, d: tr("--config", d / "c.json")(w, d),
    ["c.json"],
    setup=lambda w, d: garbage(d / "c.json", b"[1]"),
)
case(
    "train/out locked",
    tr(),
    lambda w, d: [d / "run", os.getpid()],  # the holder (this process, as `locked` holds it) by its PID
    setup=lambda w, d: locked(d / "run"),
    unchanged=False,
)
case("train/out holds a run", tr(), lambda w, d: [d / "run"], setup=lambda w, d: copy(w.run, d / "run"))
case(
    "train/--resume other settings",
    lambda w, d: ["train", "--resume", d / "run", "--tau", "2"],  # (--epochs extends a run: issue 23)
    ["--tau"],
    setup=lambda w, d: copy(w.run, d / "run"),
)
case(
    "train/--resume another student's last.pt",
    lambda w, d: ["train", "--resume", d / "run"],
    ["last.pt"],
    setup=other_checkpoint,
)
case(
    "train/--resume garbage last.pt",
    lambda w, d: ["train", "--resume", d / "run"],
    ["last.pt"],
    setup=lambda w, d: (garbage(other_checkpoint(w, d) / "checkpoints/last.pt"),),
)
case("train/batch larger than the data", tr("--batch-size", "128"), ["--batch-size"])
case("train/--batch-size 0", tr("--batch-size", "0"), ["--batch-size"])
case("train/--mixup-prob 2", tr("--mixup-prob", "2"), ["--mixup-prob"])
case("train/--precision fp8", tr("--precision", "fp8"), ["--precision"])
case("train/--align unknown", lambda w, d: soft(lambda w, d: w.cache)(w, d) + ["--align", "saliency=1"], ["saliency"])
case("train/--align without feature targets", lambda w, d: soft(lambda w, d: w.cache)(w, d) + ["--align",
     "embedding=1"], ["embedding"])  # fmt: skip
case("train/--align-metric unknown", tr("--align-metric", "l1"), ["--align-metric"])
case("train/--epochs text", tr("--epochs", "ten"), ["--epochs"])
case("train/--seed negative", tr("--seed", "-1"), ["--seed"])
case("train/--mixup-alpha 0", tr("--mixup-alpha", "0", "--mixup-prob", "1"), ["--mixup-alpha"])
case("train/--clip-grad negative", tr("--clip-grad", "-1"), ["--clip-grad"])


# ---- evaluate / compare / predict / export
def ev(run: Callable[[W, Path], Path], *extra: Any) -> Callable[[W, Path], list]:
    return lambda w, d: ["evaluate", run(w, d), "--device", "cpu", "--batch-size", "32", "--workers", "1", *extra]


def run_copy(w: World, d: Path) -> Path:
    return copy(w.run, d / "run")


case("evaluate/run missing", ev(lambda w, d: d / "nope"), lambda w, d: [d / "nope"])
case(
    "evaluate/config.json garbage",
    ev(lambda w, d: d / "run"),
    ["config.json"],
    setup=lambda w, d: garbage(run_copy(w, d) / "config.json"),
)
case(
    "evaluate/config.json a list",
    ev(lambda w, d: d / "run"),
    ["config.json"],
    setup=lambda w, d: garbage(run_copy(w, d) / "config.json", b"[]"),
)
case(
    "evaluate/model missing",
    ev(lambda w, d: d / "run"),
    ["model.safetensors"],
    setup=lambda w, d: (run_copy(w, d) / "model.safetensors").unlink(),
)
case(
    "evaluate/model garbage",
    ev(lambda w, d: d / "run"),
    ["model.safetensors"],
    setup=lambda w, d: garbage(run_copy(w, d) / "model.safetensors"),
)
case("evaluate/model with hostile metadata", ev(lambda w, d: d / "run"), ["model.safetensors"], setup=hostile_run)
case("evaluate/--batch-size 0", ev(lambda w, d: w.run, "--batch-size", "0"), ["--batch-size"])
case("evaluate/--baseline missing", ev(lambda w, d: w.run, "--baseline", "nobase"), ["nobase"])
case("compare/run missing", lambda w, d: ["compare", d / "nope", "--out", d / "cmp"], lambda w, d: [d / "nope"])
case(
    "compare/eval json garbage",
    lambda w, d: ["compare", d / "run", "--out", d / "cmp"],
    ["test.json"],
    setup=lambda w, d: garbage(run_copy(w, d) / "eval" / "test.json"),
)
case(
    "compare/eval json without results",
    lambda w, d: ["compare", d / "run", "--out", d / "cmp"],
    ["test.json"],
    setup=lambda w, d: garbage(run_copy(w, d) / "eval" / "test.json", b'{"student": "vit"}'),
)


def pr(model: Callable[[W, Path], Path], *images: Callable[[W, Path], Path]) -> Callable[[W, Path], list]:
    return lambda w, d: ["predict", *[i(w, d) for i in images], "--model", model(w, d)]


case("predict/model missing", pr(lambda w, d: d / "nope.safetensors", lambda w, d: w.image), ["nope.safetensors"])
case(
    "predict/run without model",
    pr(lambda w, d: d / "run", lambda w, d: w.image),
    ["model.safetensors"],
    setup=lambda w, d: (run_copy(w, d) / "model.safetensors").unlink(),
)
case(
    "predict/image missing (others still answered)",
    pr(lambda w, d: w.model, lambda w, d: d / "nope.png", lambda w, d: w.image),
    ["nope.png", "image.png:"],
)
case(
    "predict/image garbage (others still answered)",
    pr(lambda w, d: w.model, lambda w, d: d / "g.png", lambda w, d: w.image),
    ["g.png", "image.png:"],
    setup=lambda w, d: garbage(d / "g.png"),
)
case(
    "predict/decompression bomb (others still answered)",
    pr(lambda w, d: w.model, lambda w, d: d / "bomb.png", lambda w, d: w.image),
    ["bomb.png", "image.png:"],
    setup=lambda w, d: bomb_png(d / "bomb.png"),
)
case("export/--to wrong suffix", lambda w, d: ["export", w.run, "--to", d / "m.pt"], ["m.pt"])
case(
    "export/--to on a full disk",
    lambda w, d: ["export", w.run, "--to", w.full / "m.safetensors"],
    lambda w, d: [w.full],
    needs="full",
)

# ---- command line itself
case("cli/unknown command", lambda w, d: ["fly"], ["fly"])
case("cli/unknown option", lambda w, d: ["train", "--learning-rate", "1"], ["--learning-rate"])
case("cli/missing required option", lambda w, d: ["data", "prepare", "--out", d / "o"], ["--cifar10"])
case(
    "cli/demo bad sizes",
    lambda w, d: ["demo", "--out", d / "demo", "--per-class-per-type", "x"],
    ["--per-class-per-type"],
)

CASE_IDS = [c.id for c in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS), "case ids must be unique"
__all__ = ["CASES", "CASE_IDS", "TINY"]
