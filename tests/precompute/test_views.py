"""`precompute-teacher --views K`: the views the teacher saw, verified, resumed, merged, refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cdeit.common.cache import (
    AUGMENTED_DIR,
    HEAD_FILE,
    load_augmented_views,
    merge_caches,
    read_arrays,
    read_attrs,
    read_cache_manifest,
    verify_cache,
    write_manifest,
    write_shard,
)
from cdeit.common.errors import CdeitError
from cdeit.common.views import split_tensors
from cdeit.precompute.run import precompute_teacher
from tests.conftest import VIEW_OPTIONS
from tests.precompute.helpers import config


def view_sums(cache: Path) -> dict[str, str]:
    """file -> sha256 of every logit and augmented shard."""
    m = read_cache_manifest(cache)
    return {e["file"]: e["sha256"] for e in m["shards"] + m["augmented_shards"]}


def test_cache_holds_the_teachers_logits_on_each_rendered_view(views_cache: Path, tiny_dataset: Path) -> None:
    from cdeit.common.head import load_head
    from cdeit.common.preprocess import DeviceResize
    from cdeit.common.teacher import build_teacher
    from cdeit.precompute.features import extract_features

    m = read_cache_manifest(views_cache)
    assert m["complete"] and m["augmented"]["views"] == 2 and m["augmented"]["shards"] == 4
    assert m["augmented"]["settings"]["cutmix_prob"] == 0.3 and m["provenance"]["aug_mixup_alpha"] == 0.8
    assert {"val", "test"} <= set(m["splits"]) and all(e["split"] == "train" for e in m["augmented_shards"])
    views = load_augmented_views(views_cache, tiny_dataset)
    assert views.logits.shape == (220, 2, 10) and views.logits.dtype == torch.float32
    assert set(torch.unique(views.params.mode.long()).tolist()) == {0, 1, 2}
    images = split_tensors(tiny_dataset, "train", "cpu")["image"]
    index, view = torch.arange(0, 220, 7), torch.arange(0, 220, 7) % 2
    rendered = views.render(images, index, view)
    assert not views.mismatches(images, index, view).any()
    teacher = build_teacher("test_vit", random_weights=True, seed=0)
    head = load_head(views_cache / HEAD_FILE, teacher, 10)
    features = extract_features(teacher, DeviceResize(teacher.preprocessing, "cpu"), rendered, amp=False)
    assert np.array_equal(head.logits(features.numpy()), views.logits[index, view].numpy())


def test_storage_and_teacher_passes_are_stated_before_work(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import cdeit.precompute.storage as storage

    class Usage:
        free = 1_000  # bytes: nothing fits, so the run stops right after stating its cost

    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: Usage())
    with pytest.raises(CdeitError, match="while it is built but only"):
        precompute_teacher(config(tiny_dataset, tmp_path / "c", **VIEW_OPTIONS))
    printed = " ".join(capsys.readouterr().err.split())
    assert "views: 220 train rows x 2 views x 85 B = 36.5 KiB" in printed
    assert "the teacher runs 440 more forwards (2 passes over train" in printed


def test_verify_rerenders_views_and_catches_a_tampered_one(
    views_cache: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    assert verify_cache(views_cache, tiny_dataset, full=True) == []
    cache = Path(shutil.copytree(views_cache, tmp_path / "cache"))
    shard = cache / AUGMENTED_DIR / "train-00001.h5"
    arrays, attrs = read_arrays(shard), read_attrs(shard)
    arrays["view_erase"][5, 1, 0] = (0, 0, 8, 8)  # another erasing box than the one the teacher saw
    write_shard(shard, arrays, attrs)
    problems = verify_cache(cache)
    assert problems == [
        "shard augmented/train-00001.h5 does not match its checksum in the manifest (damaged or changed)."
    ]
    write_manifest(cache)  # a tamperer who also rewrites the checksums: only re-rendering the view catches it
    assert verify_cache(cache) == []
    problems = verify_cache(cache, tiny_dataset, full=True)
    assert (
        len(problems) == 1 and "1 of 440 re-rendered views differ" in problems[0] and "sample 69 view 1" in problems[0]
    )


def test_refuses_other_views_or_settings(views_cache: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    cache = Path(shutil.copytree(views_cache, tmp_path / "cache"))
    with pytest.raises(CdeitError, match="augmentation"):
        precompute_teacher(config(tiny_dataset, cache, views=2, cutmix_prob=0.0))
    with pytest.raises(CdeitError, match="views 2, but this run has 3"):
        precompute_teacher(config(tiny_dataset, cache, views=3, cutmix_prob=0.3))
    with pytest.raises(CdeitError, match="use it with --view same"):
        precompute_teacher(config(tiny_dataset, tmp_path / "x", views=2, splits=("val", "test"), head="none"))
    with pytest.raises(CdeitError, match="--views must be 0"):
        precompute_teacher(config(tiny_dataset, tmp_path / "x", views=-1))
    other = Path(shutil.copytree(views_cache, tmp_path / "other"))
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["provenance"]["aug_mixup_alpha"] = 0.5
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CdeitError, match="differ in their augmented views"):
        merge_caches([views_cache, other], tmp_path / "merged")


def test_an_interrupted_view_pass_resumes(views_cache: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    """A view pass cut short (shards missing, a killed writer's temporary file left) renders only what is missing.

    That a SIGKILL leaves only whole shards is the atomic shard writer's, tested through pass 1 in
    test_run.py::test_resume_after_sigkill_gives_the_same_cache; the view pass writes through the same writer.
    """
    cache = Path(shutil.copytree(views_cache, tmp_path / "cache"))
    shards = sorted((cache / AUGMENTED_DIR).glob("train-*.h5"))
    for shard in shards[1:3]:
        shard.unlink()
    stale = cache / AUGMENTED_DIR / f".{shards[1].name}.tmp-{2**22 + 1}"  # a pid above Linux's pid_max
    stale.write_bytes(b"half a shard")
    summary = precompute_teacher(config(tiny_dataset, cache, **VIEW_OPTIONS))
    rows = sum(len(read_arrays(s, ("index",))["index"]) for s in shards[1:3])
    assert summary["images"] == 0 and summary["views"] == rows * 2
    assert not list(cache.rglob(".*tmp*")) and summary["complete"]
    assert view_sums(cache) == view_sums(views_cache)


@pytest.mark.slow
def test_slices_with_a_given_head_merge_into_the_full_view_cache(
    views_cache: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    head = shutil.copy(views_cache / HEAD_FILE, tmp_path / "head.safetensors")
    slices = [tmp_path / f"slice{i}" for i in range(2)]
    for i, out in enumerate(slices):
        precompute_teacher(config(tiny_dataset, out, shard_index=i, num_shards=2, head=str(head), **VIEW_OPTIONS))
        assert [e["split"] for e in read_cache_manifest(out)["augmented_shards"]] == ["train", "train"]
    manifest = merge_caches(slices, tmp_path / "merged")
    assert manifest["complete"] and manifest["augmented"]["complete"]
    assert view_sums(tmp_path / "merged") == view_sums(views_cache)
    assert verify_cache(tmp_path / "merged", tiny_dataset) == []


def test_cache_info_and_verify_commands_show_the_views(views_cache: Path, tiny_dataset: Path) -> None:
    from typer.testing import CliRunner

    from cdeit.common.cli import app

    info = CliRunner().invoke(app, ["cache", "info", str(views_cache)])
    assert info.exit_code == 0, info.output
    text = " ".join(info.output.split())
    assert "views 2 augmented views per train sample, seed 0: erasing 0.25, mixup 0.3 (alpha 0.8), cutmix 0.3" in text
    assert "view shards 4/4" in text and "(220 x 2)" in text
    verify = CliRunner().invoke(app, ["cache", "verify", str(views_cache), "--data", str(tiny_dataset), "--full"])
    assert verify.exit_code == 0 and "every view re-rendered" in verify.output, verify.output
