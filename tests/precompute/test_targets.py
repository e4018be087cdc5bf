"""Teacher targets beyond logits and the clean view: shapes, pooling, attention maps, one row per source, refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from cdeit.common.cache import read_arrays, read_cache_manifest, verify_cache
from cdeit.common.cli import app
from cdeit.common.dataset import read_split
from cdeit.common.errors import CdeitError
from cdeit.common.preprocess import DeviceResize
from cdeit.common.teacher import build_teacher
from cdeit.common.tokens import cls_attention, pool_map, pool_patches
from cdeit.precompute.features import extract_features, extract_targets
from cdeit.precompute.run import precompute_teacher
from tests.conftest import ALL_TARGETS
from tests.precompute.helpers import config


def test_cls_attention_matches_the_unfused_layer() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_vit").eval()
    attn, x = model.blocks[-1].attn, torch.randn(3, 101, 64)
    b, t, _ = x.shape
    qkv = attn.qkv(x).reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)  # timm's layout
    full = ((qkv[0] * attn.scale) @ qkv[1].transpose(-2, -1)).softmax(-1)  # (B, H, T, T)
    want = full[:, :, 0, 1:].mean(1)
    got = cls_attention(attn, x, num_prefix=1)
    torch.testing.assert_close(got, want / want.sum(1, keepdim=True))
    assert got.shape == (3, 100) and torch.allclose(got.sum(1), torch.ones(3))


def test_pooling_to_the_student_grid() -> None:
    tokens = torch.randn(2, 14 * 14, 5)
    pooled = pool_patches(tokens, (14, 14))
    want = F.adaptive_avg_pool2d(tokens.transpose(1, 2).reshape(2, 5, 14, 14), 8).flatten(2).transpose(1, 2)
    assert pooled.shape == (2, 64, 5) and torch.equal(pooled, want)
    assert pooled[0, 0].allclose(tokens[0].reshape(14, 14, 5)[:2, :2].mean((0, 1)))  # first cell: rows/cols 0-1
    same = torch.randn(2, 64, 5)
    assert torch.equal(pool_patches(same, (8, 8)), same)
    maps = torch.rand(2, 100)
    pooled_map = pool_map(maps / maps.sum(1, keepdim=True), (10, 10))
    assert pooled_map.shape == (2, 64) and torch.allclose(pooled_map.sum(1), torch.ones(2))


def test_extract_targets_shapes_and_same_forward() -> None:
    teacher = build_teacher("test_vit", random_weights=True)
    resize = DeviceResize(teacher.preprocessing, "cpu")
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    out = extract_targets(teacher, resize, images, amp=False, extras=("patches", "attention"))
    assert {k: tuple(v.shape) for k, v in out.items()} == {"features": (4, 64), "patches": (4, 64, 64),
                                                           "attention": (4, 64)}  # fmt: skip
    assert all(v.dtype == torch.float16 for v in out.values())
    assert torch.equal(out["features"], extract_features(teacher, resize, images, amp=False))
    with torch.no_grad():
        tokens = teacher.model.forward_features(resize(images))  # test_vit: 10x10 grid, one prefix token
    torch.testing.assert_close(out["patches"].float(), pool_patches(tokens[:, 1:], (10, 10)), atol=2e-3, rtol=2e-3)
    assert torch.allclose(out["attention"].float().sum(1), torch.ones(4), atol=1e-2)
    assert (out["attention"] >= 0).all()


def test_clean_view_has_one_row_per_source(clean_cache: Path, sourced_dataset: Path) -> None:
    manifest = read_cache_manifest(clean_cache)
    sources = read_split(sourced_dataset / "sources.beton", fields=("image", "source"))
    assert manifest["provenance"]["view"] == "clean" and list(manifest["splits"]) == ["sources"]
    assert manifest["provenance"]["targets"] == list(ALL_TARGETS)
    assert manifest["splits"]["sources"]["count"] == len(sources["source"]) == 80  # not 240 (one per variant)
    arrays = [read_arrays(clean_cache / e["file"]) for e in manifest["shards"]]
    source = np.concatenate([a["source"] for a in arrays])
    assert np.array_equal(source, sources["source"])
    shapes = {k: v.shape[1:] for k, v in arrays[0].items()}
    assert shapes["logits"] == (10,) and shapes["features"] == (64,)
    assert shapes["patches"] == (64, 64) and shapes["attention"] == (64,)
    assert verify_cache(clean_cache, sourced_dataset) == []
    # the features of a row are the teacher's features of that source's clean image
    teacher = build_teacher("test_vit", random_weights=True)
    images = torch.from_numpy(sources["image"][:8]).permute(0, 3, 1, 2).contiguous()
    want = extract_features(teacher, DeviceResize(teacher.preprocessing, "cpu"), images, amp=False)
    torch.testing.assert_close(torch.from_numpy(arrays[0]["features"][:8]), want, atol=2e-3, rtol=2e-3)


def test_cache_info_shows_the_view(clean_cache: Path, same_feature_cache: Path) -> None:
    clean = CliRunner().invoke(app, ["cache", "info", str(clean_cache)])
    same = CliRunner().invoke(app, ["cache", "info", str(same_feature_cache)])
    assert clean.exit_code == 0 and same.exit_code == 0
    assert "clean (the teacher saw each sample's clean source image" in " ".join(clean.output.split())
    assert "same (the teacher saw each sample itself" in " ".join(same.output.split())
    assert "patches float16" in clean.output and "8x8 grid" in " ".join(clean.output.split())


def test_rerun_resumes_and_other_views_or_targets_are_refused(
    clean_cache: Path, sourced_dataset: Path, tmp_path: Path
) -> None:
    cache = Path(shutil.copytree(clean_cache, tmp_path / "cache"))
    summary = precompute_teacher(
        config(sourced_dataset, cache, view="clean", targets=ALL_TARGETS, store_features=False)
    )
    assert summary["images"] == 0 and summary["complete"]
    with pytest.raises(CdeitError, match="holds a clean-view cache, but this run has --view same"):
        precompute_teacher(config(sourced_dataset, cache, targets=ALL_TARGETS, store_features=False))
    with pytest.raises(CdeitError, match="per-patch targets patches,attention, not patches"):
        precompute_teacher(config(sourced_dataset, cache, view="clean", targets=("logits", "embedding", "patches")))


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"view": "clean"}, "has no sources.beton .* rebuild it with the current `cdeit data prepare`"),
        ({"view": "blurred"}, "--view 'blurred' is unknown"),
        ({"targets": ("logits", "tokens")}, "--targets 'tokens' is unknown"),
        ({"targets": ("embedding",)}, "lacks logits"),
        ({"teacher": "test_resnet", "targets": ("logits", "patches")}, "need a timm VisionTransformer teacher"),
    ],
)
def test_refusals_are_one_sentence(tiny_dataset: Path, tmp_path: Path, over: dict, message: str) -> None:
    with pytest.raises(CdeitError, match=message):
        precompute_teacher(config(tiny_dataset, tmp_path / "c", **over))
    assert not (tmp_path / "c").exists()


def test_clean_view_refuses_splits(sourced_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(CdeitError, match="--splits does not apply to --view clean"):
        precompute_teacher(config(sourced_dataset, tmp_path / "c", view="clean", splits=("train", "val")))


def test_storage_is_printed_and_a_full_disk_refused(
    sourced_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import cdeit.precompute.run as run_module
    import cdeit.precompute.storage as storage
    from cdeit.common.cache import plan_shards

    class Usage:
        free = 100_000  # bytes: less than 240 rows x 8 KiB of patches

    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: Usage())
    with pytest.raises(CdeitError, match=r"97\.7 KiB"):  # the free space it names
        precompute_teacher(config(sourced_dataset, tmp_path / "c", targets=ALL_TARGETS))
    assert not (tmp_path / "c").exists()
    printed = " ".join(capsys.readouterr().err.split())
    assert "storage: 240 rows x 8.3 KiB (index 8 B, logits 40 B, embedding 128 B, patches 8.0 KiB" in printed
    Usage.free = 10**9
    job = run_module.prepare_job(config(sourced_dataset, tmp_path / "d", targets=ALL_TARGETS))
    plan = plan_shards({s: job.split_entry(s)["count"] for s in job.cache_splits}, 64)
    final, peak = storage.storage_needed(job, plan)
    assert final >= 240 * (8 + 40 + 2 * 64 + 2 * 64 * 64 + 2 * 64) and peak > final
