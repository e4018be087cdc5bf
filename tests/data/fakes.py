"""Tiny fake releases in their official layouts, written by the tests (no download): CIFAR-100, Tiny-ImageNet."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from cdeit.data.synthetic import render


def write_fake_cifar100(to: Path, train_per_class: int = 3, test_per_class: int = 2, seed: int = 0) -> Path:
    """`to/cifar-100-python/` with `train`, `test` (fine and coarse labels) and `meta`; returns that folder."""
    root = to / "cifar-100-python"
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", train_per_class), ("test", test_per_class)):
        fine = rng.permutation(np.repeat(np.arange(100), n))
        images = render(fine % 10, rng)
        batch = {
            b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(fine), 3072)),
            b"fine_labels": [int(y) for y in fine],
            b"coarse_labels": [int(y) // 5 for y in fine],
        }
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [f"fine{k}".encode() for k in range(100)], b"coarse_label_names": []}
    (root / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_fake_cifar100c(to: Path, test_labels: np.ndarray, names: tuple[str, ...] = ("fog",)) -> Path:
    """`to/CIFAR-100-C/` with labels.npy (test labels x 5) and one random 32px array per corruption."""
    root = to / "CIFAR-100-C"
    root.mkdir(parents=True)
    np.save(root / "labels.npy", np.tile(test_labels, 5).astype(np.uint8))
    rng = np.random.default_rng(1)
    for name in names:
        np.save(root / f"{name}.npy", rng.integers(0, 256, (5 * len(test_labels), 32, 32, 3), dtype=np.uint8))
    return root


def write_fake_tiny_imagenet(to: Path, classes: int = 3, train: int = 4, val: int = 3) -> Path:
    """`to/tiny-imagenet-200/` with wnids.txt, words.txt, train/<wnid>/images and val/ + val_annotations.txt."""
    root = to / "tiny-imagenet-200"
    wnids = [f"n0{k:07d}" for k in range(classes)]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tthing {k}, other name\n" for k, w in enumerate(wnids)))
    rng = np.random.default_rng(2)
    for k, w in enumerate(wnids):
        (root / "train" / w / "images").mkdir(parents=True)
        for i, img in enumerate(render(np.full(train, k), rng, 64)):
            Image.fromarray(img).save(root / "train" / w / "images" / f"{w}_{i}.JPEG", quality=95)
    lines = []
    labels = np.tile(np.arange(classes), val)
    for i, (img, y) in enumerate(zip(render(labels, rng, 64), labels, strict=True)):
        Image.fromarray(img).save(root / "val" / "images" / f"val_{i}.JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{wnids[y]}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    return root


def write_fake_tiny_imagenet_c(to: Path, tiny: Path, names: tuple[str, ...] = ("fog",)) -> Path:
    """`to/Tiny-ImageNet-C/<corruption>/<severity>/<wnid>/<val file>`: each val image darkened by severity."""
    root = to / "Tiny-ImageNet-C"
    for line in (tiny / "val" / "val_annotations.txt").read_text().splitlines():
        file, wnid = line.split("\t")[:2]
        image = np.asarray(Image.open(tiny / "val" / "images" / file).convert("RGB"))
        for name in names:
            for s in range(1, 6):
                folder = root / name / str(s) / wnid
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray((image // (s + 1)).astype(np.uint8)).save(folder / file, quality=95)
    return root
