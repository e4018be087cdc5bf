"""`cdeit data prepare`: exact counts, split policies, provenance, determinism, atomicity, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.common.dataset import CORRUPTIONS, fingerprint, load_manifest, read_split
from cdeit.common.errors import CdeitError
from cdeit.data.audit import audit
from cdeit.data.prepare import PrepareConfig, prepare
from cdeit.data.sources import read_cifar10
from cdeit.data.synthetic import write_synthetic_cifar
from tests.conftest import write_fake_cifar10c

SIZES = (30, 5, 5)


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic CIFAR-10 (50 train / 20 test per class) plus a fake CIFAR-10-C for its test set."""
    root = tmp_path_factory.mktemp("raw")
    write_synthetic_cifar(root, train_per_class=50, test_per_class=20, seed=0)
    c = read_cifar10(root)
    write_fake_cifar10c(root, c.test_images, c.test_labels, list(CORRUPTIONS[1:]))
    return root


@pytest.fixture(scope="module")
def c10c_grouped(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "grouped"
    prepare(PrepareConfig(cifar10=raw, cifar10c=raw, out=out, per_class_per_type=SIZES, workers=1))
    return out


def test_counts_are_exact_per_split_class_and_type(c10c_grouped: Path) -> None:
    m = load_manifest(c10c_grouped)
    for split, n in zip(("train", "val", "test"), SIZES, strict=True):
        info = m["splits"][split]
        assert info["count"] == n * 10 * 11
        assert np.array(info["counts_class_by_type"]).tolist() == [[n] * 11] * 10
        arrays = read_split(c10c_grouped / f"{split}.beton")
        assert np.array_equal(arrays["index"], np.arange(info["count"]))
        assert info["fingerprint"] == fingerprint(arrays["image"], arrays["label"])
        assert info["distinct_sources"] == len(np.unique(arrays["source"]))
        assert set(arrays["severity"][arrays["corruption"] == 0]) == {0}
        assert set(arrays["severity"][arrays["corruption"] > 0]) <= {1, 2, 3, 4, 5}


def test_grouped_split_shares_no_photograph(c10c_grouped: Path) -> None:
    report = audit(c10c_grouped)
    assert all(p["shared_sources"] == 0 for p in report["pairs"])
    # clean images come from CIFAR-10 train (ids < 50000), corrupted ones from the test set
    a = read_split(c10c_grouped / "train.beton", fields=("corruption", "source"))
    assert (a["source"][a["corruption"] == 0] < 50_000).all() and (a["source"][a["corruption"] > 0] >= 50_000).all()


def test_pixels_come_from_the_named_source_and_severity(raw: Path, c10c_grouped: Path) -> None:
    c = read_cifar10(raw)
    a = read_split(c10c_grouped / "val.beton")
    for k in range(len(a["label"])):
        src, sev = a["source"][k], a["severity"][k]
        orig = c.test_images[src - 50_000] if src >= 50_000 else c.train_images[src]
        expected = np.clip(orig.astype(int) + 10 * sev, 0, 255) if a["corruption"][k] else orig
        assert np.array_equal(a["image"][k], expected)
        assert a["label"][k] == (c.test_labels[src - 50_000] if src >= 50_000 else c.train_labels[src])


def test_paper_split_leaks_and_audit_strict_fails(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "paper"
    prepare(PrepareConfig(cifar10=raw, cifar10c=raw, out=out, per_class_per_type=SIZES, split="paper", workers=1))
    report = audit(out)
    assert sum(p["shared_sources"] for p in report["pairs"]) > 0
    assert np.array(load_manifest(out)["splits"]["train"]["counts_class_by_type"]).tolist() == [[30] * 11] * 10
    result = CliRunner().invoke(app, ["data", "audit", str(out), "--strict"])
    assert result.exit_code == 1 and "shared photographs" in result.output


def test_rerun_reuses_and_other_recipe_is_refused(raw: Path, c10c_grouped: Path) -> None:
    before = (c10c_grouped / "train.beton").stat().st_mtime_ns
    m = prepare(PrepareConfig(cifar10=raw, cifar10c=raw, out=c10c_grouped, per_class_per_type=SIZES, workers=1))
    assert m["reused"] and (c10c_grouped / "train.beton").stat().st_mtime_ns == before
    with pytest.raises(CdeitError, match="already holds a different dataset .*seed"):
        prepare(PrepareConfig(cifar10=raw, cifar10c=raw, out=c10c_grouped, per_class_per_type=SIZES, seed=1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"per_class_per_type": (4000, 5, 5)},
            "asks for 4010 clean CIFAR-10 train images per class but the source holds 50",
        ),
        ({"types": ("clean", "fogg")}, "unknown image type 'fogg'"),
        ({"generate": True}, "exactly one of --cifar10c DIR or --corruptions generate"),
        ({"per_class_per_type": (30, -1, 5)}, "must be non-negative"),
    ],
)
def test_bad_input_writes_nothing(raw: Path, tmp_path: Path, kwargs: dict, message: str) -> None:
    out = tmp_path / "never"
    cfg = {"cifar10": raw, "cifar10c": raw, "out": out, "per_class_per_type": SIZES, "workers": 1} | kwargs
    with pytest.raises(CdeitError, match=message):
        prepare(PrepareConfig(**cfg))
    assert not out.exists()


def test_missing_corruption_file_writes_nothing(raw: Path, tmp_path: Path) -> None:
    shutil.copytree(raw / "CIFAR-10-C", tmp_path / "CIFAR-10-C")
    (tmp_path / "CIFAR-10-C" / "zoom_blur.npy").unlink()
    out = tmp_path / "never"
    with pytest.raises(CdeitError, match="zoom_blur.npy is missing"):
        prepare(PrepareConfig(cifar10=raw, cifar10c=tmp_path, out=out, per_class_per_type=SIZES))
    assert not out.exists()


def test_foreign_files_in_out_are_refused(raw: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CdeitError, match="already holds other files"):
        prepare(PrepareConfig(cifar10=raw, cifar10c=raw, out=tmp_path, per_class_per_type=SIZES))


def test_killed_run_leaves_no_manifest_and_rerun_completes(raw: Path, tmp_path: Path, monkeypatch) -> None:
    import cdeit.data.writer as writer

    calls = {"n": 0}
    real = writer.write_beton

    def dies_on_second(path, arrays, workers=1):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        real(path, arrays, workers)

    monkeypatch.setattr(writer, "write_beton", dies_on_second)
    out = tmp_path / "ds"
    cfg = PrepareConfig(cifar10=raw, cifar10c=raw, out=out, per_class_per_type=SIZES, workers=1)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg)
    assert not (out / "manifest.json").exists() and not list(out.glob(".*tmp*"))
    monkeypatch.setattr(writer, "write_beton", real)
    assert not prepare(cfg).get("reused")
    assert load_manifest(out)["splits"]["test"]["count"] == 550


GEN_TYPES = ("clean", "brightness", "gaussian_noise", "jpeg_compression")


def _generated(raw: Path, out: Path, workers: int, split: str = "grouped", seed: int = 0) -> dict:
    cfg = PrepareConfig(
        cifar10=raw, generate=True, out=out, per_class_per_type=(8, 2, 2), types=GEN_TYPES, split=split,
        seed=seed, workers=workers,
    )  # fmt: skip
    return prepare(cfg)


def test_generated_grouped_counts_and_every_source_once_per_type(raw: Path, tmp_path: Path) -> None:
    m = _generated(raw, tmp_path / "g", workers=1)
    for split, n in zip(("train", "val", "test"), (8, 2, 2), strict=True):
        counts = np.array(m["splits"][split]["counts_class_by_type"])
        assert counts[:, [0, 1, 9, 10]].tolist() == [[n] * 4] * 10 and counts[:, 2:9].sum() == 0
        a = read_split(tmp_path / "g" / f"{split}.beton", fields=("corruption", "source", "severity"))
        assert m["splits"][split]["distinct_sources"] == n * 10
        for t in (0, 1, 9, 10):  # each photograph of the split appears exactly once per type
            assert sorted(a["source"][a["corruption"] == t]) == sorted(np.unique(a["source"]))
    assert all(p["shared_sources"] == 0 for p in audit(tmp_path / "g")["pairs"])


def test_generated_is_deterministic_and_independent_of_workers(raw: Path, tmp_path: Path) -> None:
    a = _generated(raw, tmp_path / "a", workers=1)
    b = _generated(raw, tmp_path / "b", workers=2)
    c = _generated(raw, tmp_path / "c", workers=1, seed=5)
    for split in ("train", "val", "test"):
        assert a["splits"][split]["fingerprint"] == b["splits"][split]["fingerprint"]
        assert a["splits"][split]["fingerprint"] != c["splits"][split]["fingerprint"]


def test_cli_prepare_and_show(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    args = ["data", "prepare", "--cifar10", str(raw), "--corruptions", "generate", "--out", str(out),
            "--per-class-per-type", "4,2,2", "--types", ",".join(GEN_TYPES), "--workers", "1"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "dataset ready" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split_policy"] == "grouped" and manifest["corruption_source"] == "generate"
    png = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["data", "show", str(out), "--out", str(png), "--split", "val"])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--per-class-per-type", "1,2"], "must be three integers"),
        (["--split", "random"], "--split 'random' is unknown"),
        (["--corruptions", "download"], "--corruptions 'download' is not supported"),
    ],
)
def test_cli_bad_options_are_one_sentence(raw: Path, tmp_path: Path, args: list[str], message: str) -> None:
    base = ["data", "prepare", "--cifar10", str(raw), "--cifar10c", str(raw), "--out", str(tmp_path / "x")]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_sources_beton_holds_one_clean_image_per_source(raw: Path, c10c_grouped: Path) -> None:
    c = read_cifar10(raw)
    m = load_manifest(c10c_grouped)
    src = read_split(c10c_grouped / "sources.beton")
    assert m["source_images"]["count"] == len(src["source"]) == len(np.unique(src["source"]))
    assert m["source_images"]["fingerprint"] == fingerprint(src["image"], src["label"])
    used = np.concatenate([read_split(c10c_grouped / f"{s}.beton", fields=("source",))["source"] for s in m["splits"]])
    assert np.array_equal(np.sort(src["source"]), np.unique(used))
    assert (src["corruption"] == 0).all() and np.array_equal(src["index"], np.arange(len(src["index"])))
    for k in range(0, len(src["source"]), 37):
        s = src["source"][k]
        clean = c.test_images[s - 50_000] if s >= 50_000 else c.train_images[s]
        assert np.array_equal(src["image"][k], clean)


@pytest.mark.parametrize("pool", ["test", "train"])
def test_generated_sources_restricted_to_one_pool(raw: Path, tmp_path: Path, pool: str) -> None:
    cfg = PrepareConfig(cifar10=raw, generate=True, out=tmp_path / pool, per_class_per_type=(8, 2, 2), types=GEN_TYPES,
                        sources=pool, workers=1)  # fmt: skip
    m = prepare(cfg)
    assert m["source_pool"] == pool
    for split, n in zip(("train", "val", "test"), (8, 2, 2), strict=True):
        a = read_split(tmp_path / pool / f"{split}.beton", fields=("source", "corruption"))
        assert ((a["source"] >= 50_000) if pool == "test" else (a["source"] < 50_000)).all()
        assert m["splits"][split]["count"] == n * 10 * len(GEN_TYPES)
    assert all(p["shared_sources"] == 0 for p in audit(tmp_path / pool)["pairs"])
    default = _generated(raw, tmp_path / "all", workers=1)
    assert "source_pool" not in default  # the default recipe is unchanged, so existing datasets stay reusable
    with pytest.raises(CdeitError, match="already holds a different dataset"):
        prepare(PrepareConfig(cifar10=raw, generate=True, out=tmp_path / "all", per_class_per_type=(8, 2, 2),
                              types=GEN_TYPES, sources=pool, workers=1))  # fmt: skip


@pytest.mark.parametrize("split", ["grouped", "paper"])
def test_cifar10c_with_test_sources_takes_clean_images_from_test_too(raw: Path, tmp_path: Path, split: str) -> None:
    out = tmp_path / split
    types = ("clean", "fog", "jpeg_compression")
    m = prepare(PrepareConfig(cifar10=raw, cifar10c=raw, out=out, per_class_per_type=(10, 5, 5), types=types,
                              split=split, sources="test", workers=1))  # fmt: skip
    by_split = {}
    for name, n in zip(("train", "val", "test"), (10, 5, 5), strict=True):
        a = read_split(out / f"{name}.beton", fields=("source", "corruption"))
        assert (a["source"] >= 50_000).all() and m["splits"][name]["count"] == n * 10 * len(types)
        by_split[name] = a
    if split == "grouped":  # a split's clean photographs are among its own corrupted ones' sources
        assert all(p["shared_sources"] == 0 for p in audit(out)["pairs"])
        for a in by_split.values():
            assert set(a["source"][a["corruption"] == 0]) <= set(a["source"])


def test_source_pool_refusals(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(CdeitError, match=r"asks for 21 .*per class but the source holds 20.*"):
        prepare(PrepareConfig(cifar10=raw, generate=True, out=tmp_path / "a", per_class_per_type=(11, 5, 5),
                              types=GEN_TYPES, sources="test"))  # fmt: skip
    with pytest.raises(CdeitError, match="--sources train needs --corruptions generate"):
        prepare(PrepareConfig(cifar10=raw, cifar10c=raw, out=tmp_path / "b", per_class_per_type=SIZES, sources="train"))
    result = CliRunner().invoke(app, ["data", "prepare", "--cifar10", str(raw), "--corruptions", "generate",
                                      "--out", str(tmp_path / "c"), "--sources", "val"])  # fmt: skip
    assert result.exit_code == 2 and "--sources 'val' is unknown; choose all, train, test" in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
