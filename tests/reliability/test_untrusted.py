"""Shared files are untrusted input (issue 25): a cache or dataset from a collaborator can never make cdeit read,
write or delete outside its folders, choose code or a download, or fail without naming the file and key.

Each case copies the world's good files into its own folder, damages one thing, runs the real command line and
asserts the exit code, the file and key the sentence names, and that nothing outside the named output changed.
Classes (docs/reliability.md): escape, code, silent, lost, hang, unhelpful.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from tests.reliability.runner import snapshot
from tests.reliability.world import World

REPO = Path(__file__).resolve().parents[2]


def cli(*argv: Any, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run `cdeit ARGV` in-process (typer's CliRunner): exit code and everything printed."""
    from typer.testing import CliRunner

    from cdeit.common.cli import app

    result = CliRunner().invoke(app, [str(a) for a in argv], env=env)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, " ".join(result.output.split())


def refused(code: int, output: str, *names: str) -> None:
    """One sentence (exit 2, no unexpected-error line) naming every one of `names`."""
    assert code == 2, output
    assert "failed unexpectedly" not in output and "Traceback" not in output, output
    for name in names:
        assert " ".join(str(name).split()) in output, (name, output)


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def edit(path: Path, change: Callable[[dict], Any]) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value, indent=2))


# --------------------------------------------------------------------------------------------- escape


@pytest.mark.parametrize("where", ["absolute", "parent"])
def test_escape_merge_never_touches_a_file_outside_its_folders(world: World, tmp_path: Path, where: str) -> None:
    """A shard listed as /abs/x.h5 or ../x.h5 is refused before merge reads, writes or deletes anything."""
    cache = copy(world.cache, tmp_path / "c1")
    victim = tmp_path / "victim" / "evil.h5"
    victim.parent.mkdir()
    shutil.copy(next(cache.glob("train-*.h5")), victim)
    name = str(victim) if where == "absolute" else "../victim/evil.h5"
    edit(cache / "manifest.json", lambda m: m["feature_shards"].append(m["shards"][0] | {"file": name}))
    before = snapshot(tmp_path)
    code, output = cli("cache", "merge", cache, world.cache2, "--out", tmp_path / "out")
    refused(code, output, cache / "manifest.json", "feature_shards[0].file")
    assert snapshot(tmp_path) == before  # the victim is there, and --out was never made


def test_escape_shard_symlinked_out_of_the_cache(world: World, tmp_path: Path) -> None:
    """A listed shard that is a symlink to a file outside the cache is refused by every reader."""
    cache = copy(world.cache, tmp_path / "cache")
    shard = next(cache.glob("train-*.h5"))
    outside = tmp_path / "elsewhere.h5"
    shutil.move(shard, outside)
    shard.symlink_to(outside)
    before = snapshot(tmp_path)
    for argv in (["cache", "info", cache], ["cache", "verify", cache]):
        code, output = cli(*argv)
        assert code != 0 and shard.name in output and "failed unexpectedly" not in output, output
    assert snapshot(tmp_path) == before


def test_escape_hdf5_external_storage_is_refused(world: World, tmp_path: Path) -> None:
    """A shard whose logits live in a raw file beside it (HDF5 external storage) never verifies "ok"."""
    from cdeit.common.cache import write_manifest

    cache = copy(world.cache, tmp_path / "cache")
    shard = next(cache.glob("train-*.h5"))
    with h5py.File(shard, "a") as f:
        logits = f["logits"][()]
        del f["logits"]
        raw = cache / "logits.raw"
        raw.write_bytes(logits.astype("<f4").tobytes())
        f.create_dataset("logits", shape=logits.shape, dtype="<f4", external=[(str(raw), 0, logits.nbytes)])
    with pytest.raises(Exception, match="logits"):  # the manifest cannot even be rebuilt over it
        write_manifest(cache)
    before = snapshot(tmp_path)
    code, output = cli("cache", "verify", cache)
    assert code == 1 and shard.name in output and "'logits'" in output, output
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("link", ["soft", "external"])
def test_escape_hdf5_links_are_refused_by_merge(world: World, tmp_path: Path, link: str) -> None:
    """A shard whose dataset is a soft or external link is refused before merge copies it (checksum updated)."""
    from cdeit.common.cache import sha256_file

    cache = copy(world.cache, tmp_path / "cache")
    shard = next(cache.glob("train-*.h5"))
    with h5py.File(shard, "a") as f:
        f.move("logits", "hidden")
        f["logits"] = h5py.SoftLink("/hidden") if link == "soft" else h5py.ExternalLink("/etc/passwd", "/x")
    edit(cache / "manifest.json", lambda m: [e.update(sha256=sha256_file(shard), bytes=shard.stat().st_size)
                                            for e in m["shards"] if e["file"] == shard.name])  # fmt: skip
    before = snapshot(tmp_path)
    code, output = cli("cache", "merge", cache, "--out", tmp_path / "out")
    refused(code, output, shard.name, "'logits'")
    assert snapshot(tmp_path) == before


def test_escape_dataset_split_named_outside_its_folder(world: World, tmp_path: Path) -> None:
    """A dataset manifest whose split is named `../x` (its .beton outside DATA) is refused, naming the key."""
    data = copy(world.data, tmp_path / "data")
    edit(data / "manifest.json", lambda m: m["splits"].__setitem__("../test", m["splits"].pop("test")))
    before = snapshot(tmp_path)
    code, output = cli("data", "audit", data)
    refused(code, output, data / "manifest.json", "splits.../test")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------- code


@pytest.mark.parametrize("spec", ["local-dir:/tmp/evil", "hf-hub:nobody/not-cached"])
def test_code_a_cache_never_chooses_the_online_teacher(world: World, tmp_path: Path, spec: str) -> None:
    """`teacher_spec` written into a cache by hand picks no folder and no download for --online-teacher."""
    from cdeit.common.cache.format import MANIFEST
    from cdeit.common.errors import CdeitError
    from cdeit.train.core.online import _teacher_name

    cache = tmp_path / "cache"
    prov = {"teacher": "test_vit", "teacher_spec": spec}
    cfg = type("Cfg", (), {"teacher_checkpoint": None})()
    with pytest.raises(CdeitError, match="teacher_spec") as info:
        _teacher_name(cache, prov, cfg)  # type: ignore[arg-type]
    assert str(cache / MANIFEST) in str(info.value)
    with pytest.raises(CdeitError, match="not a plain timm name"):
        _teacher_name(cache, {"teacher": spec}, cfg)  # type: ignore[arg-type]
    assert _teacher_name(cache, {"teacher": "test_vit"}, cfg) == "test_vit"  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- unhelpful


def _drop(key: str) -> Callable[[dict], Any]:
    def change(m: dict) -> None:
        *path, last = key.split(".")
        node = m
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = "x"
        else:
            node.pop(last)

    return change


def _retype(key: str) -> Callable[[dict], Any]:
    def change(m: dict) -> None:
        *path, last = key.split(".")
        node = m
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = {"wrong": [1]} if not isinstance(node[last], dict) else 7

    return change


CACHE_KEYS = ["complete", "provenance", "dataset", "dataset.classes", "dataset.num_classes", "splits",
              "splits.train.count", "splits.train.fingerprint", "splits.val.num_shards", "shards", "feature_shards",
              "shards.0.file", "shards.0.bytes", "shards.0.sha256", "shards.0.split", "head.hash",
              "provenance.view", "provenance.targets"]  # fmt: skip


@pytest.mark.parametrize("key", CACHE_KEYS)
@pytest.mark.parametrize("how", ["drop", "retype"])
def test_unhelpful_every_cache_manifest_key_is_named(world: World, tmp_path: Path, key: str, how: str) -> None:
    """Deleting or retyping any key a reader uses is one sentence naming the manifest and the key, for every
    command that reads a cache (info, verify, merge, train's cache load)."""
    from cdeit.common.cache import load_teacher_logits
    from cdeit.common.errors import CdeitError

    cache = copy(world.cache, tmp_path / "cache")
    if how == "drop" and key.startswith(("provenance.", "head.")):
        pytest.skip("an optional key: its absence is what caches of other kinds write")
    edit(cache / "manifest.json", (_drop if how == "drop" else _retype)(key))
    named = key.split(".")[-1] if not key[-1].isdigit() else key.split(".")[0]
    before = snapshot(tmp_path)
    for argv in (["cache", "info", cache], ["cache", "merge", cache, "--out", tmp_path / "out"]):
        code, output = cli(*argv)
        refused(code, output, cache / "manifest.json", named)
    code, output = cli("cache", "verify", cache)
    assert code == 1 and named in output and "failed unexpectedly" not in output, output
    with pytest.raises(CdeitError, match=named):
        load_teacher_logits(cache, world.data)
    assert snapshot(tmp_path) == before


DATA_KEYS = ["classes", "splits", "splits.test.count", "splits.test.fingerprint", "splits.train",
             "splits.test.beton_sha256", "types"]  # fmt: skip


@pytest.mark.parametrize("key", DATA_KEYS)
def test_unhelpful_every_dataset_manifest_key_is_named(world: World, tmp_path: Path, key: str) -> None:
    """A dataset manifest with a mistyped key: `data show`, `data audit` and `precompute-teacher` name it."""
    data = copy(world.data, tmp_path / "data")
    edit(data / "manifest.json", _retype(key) if key != "types" else lambda m: m.__setitem__("types", ["nope"]))
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    for argv in (["data", "show", data, "--out", out / "x.png"], ["data", "audit", data],
                 ["precompute-teacher", "--data", data, "--out", out / "cache", "--device", "cpu"]):  # fmt: skip
        code, output = cli(*argv)
        refused(code, output, data / "manifest.json", key.split(".")[-1])
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before


def test_unhelpful_deeply_nested_manifest(world: World, tmp_path: Path) -> None:
    cache = copy(world.cache, tmp_path / "cache")
    (cache / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    code, output = cli("cache", "info", cache)
    refused(code, output, cache / "manifest.json")


def test_unhelpful_shard_attributes_are_named_when_a_manifest_is_rebuilt(world: World, tmp_path: Path) -> None:
    """A shard without its split_count: merge (which rebuilds the manifest from the shards) names shard and key."""
    from cdeit.common.cache import sha256_file

    cache = copy(world.cache, tmp_path / "cache")
    shard = next(cache.glob("val-*.h5"))
    with h5py.File(shard, "a") as f:
        del f.attrs["split_count"]
    edit(cache / "manifest.json", lambda m: [e.update(sha256=sha256_file(shard), bytes=shard.stat().st_size)
                                            for e in m["shards"] if e["file"] == shard.name])  # fmt: skip
    code, output = cli("cache", "merge", cache, "--out", tmp_path / "out")
    refused(code, output, shard.name, "split_count")
    assert not (tmp_path / "out").exists()  # what the merge had copied is removed again


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--device", "meta"], "--device"),
        (["--device", "mps"], "--device"),
        (["--device", "gpu!"], "--device"),
        (["--shard-size", "99999999999999999999"], "--shard-size"),
        (["--workers", "99999"], "--workers"),
    ],
)
def test_unhelpful_precompute_options_out_of_bounds(world: World, tmp_path: Path, argv: list, named: str) -> None:
    code, output = cli("precompute-teacher", "--data", world.data, "--out", tmp_path / "c", *argv)
    refused(code, output, named)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "abc"}, {"RANK": "1"}, {"LOCAL_RANK": "-1"}])
def test_unhelpful_torchrun_variables_without_torchrun(world: World, tmp_path: Path, env: dict) -> None:
    """A stale RANK=1 used to exit 0 having written nothing; WORLD_SIZE=abc a ValueError."""
    code, output = cli("precompute-teacher", "--data", world.data, "--out", tmp_path / "c", "--device", "cpu",
                       env=env)  # fmt: skip
    refused(code, output, next(iter(env)))
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(("hook", "value"), [("CDEIT_TEST_LOCK_HOLD_S", "soon"), ("CDEIT_TEST_KILL", "sometime")])
def test_unhelpful_test_hooks_bad_values_and_reach(world: World, tmp_path: Path, hook: str, value: str) -> None:
    """A bad test-hook value is a sentence under the test flag, and nothing at all outside it."""
    out = tmp_path / "out"
    code, output = cli("cache", "merge", world.cache, "--out", out, env={hook: value})
    refused(code, output, hook)
    code, output = cli("cache", "merge", world.cache, "--out", out, env={hook: value, "CDEIT_TESTING": "0"})
    assert code == 0, output


# --------------------------------------------------------------------------------------------- silent


def test_silent_merge_into_a_run_folder_is_refused(world: World, tmp_path: Path) -> None:
    for kind, src in (("run", world.run), ("dataset", world.data)):
        target = copy(src, tmp_path / kind)
        before = snapshot(tmp_path)
        code, output = cli("cache", "merge", world.cache, "--out", target)
        refused(code, output, target)
        assert snapshot(tmp_path) == before


def test_silent_show_and_audit_check_the_betons(world: World, tmp_path: Path) -> None:
    """A .beton swapped in from another dataset is refused by `data show` and `data audit`, as by train."""
    data = copy(world.data, tmp_path / "data")
    shutil.copy(world.data2 / "test.beton", data / "test.beton")
    before = snapshot(tmp_path)
    for argv in (["data", "show", data, "--out", tmp_path / "x.png"], ["data", "audit", data]):
        code, output = cli(*argv)
        refused(code, output, data / "test.beton")
    assert snapshot(tmp_path) == before


def test_silent_prepare_rerun_verifies_before_nothing_to_do(world: World, tmp_path: Path) -> None:

    data, raw = tmp_path / "data", world.cifar
    argv = ["data", "prepare", "--cifar10", raw, "--out", data, "--corruptions", "generate", "--per-class-per-type",
            "1,1,1", "--types", "clean,brightness", "--workers", "1"]  # fmt: skip
    code, output = cli(*argv)
    assert code == 0, output
    beton = data / "train.beton"
    flipped = bytearray(beton.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    beton.write_bytes(bytes(flipped))
    before = snapshot(tmp_path)
    code, output = cli(*argv)
    refused(code, output, beton)
    assert snapshot(tmp_path) == before


def test_silent_closed_stdout_is_an_error(world: World) -> None:
    """`cdeit cache info CACHE >&-` printed nothing and exited 0."""
    cmd = f"{sys.executable} -m cdeit.common.cli cache info {world.cache} >&-"
    done = subprocess.run(["bash", "-c", cmd], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=os.environ | {"PYTHONPATH": os.environ.get("PYTHONPATH", "")})  # fmt: skip
    assert done.returncode == 2 and "standard output" in done.stderr, done.stderr


# --------------------------------------------------------------------------------------------- lost


def test_lost_synth_never_replaces_cifar_batches(world: World, tmp_path: Path) -> None:
    raw = copy(world.cifar, tmp_path / "raw")
    before = snapshot(tmp_path)
    code, output = cli("data", "synth", "--to", raw, "--train-per-class", "1", "--test-per-class", "1")
    refused(code, output, raw / "cifar-10-batches-py")
    assert snapshot(tmp_path) == before


def test_lost_hash_cache_never_replaces_a_foreign_file(world: World, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    before = snapshot(tmp_path)
    code, output = cli("data", "audit", world.data, env={"CDEIT_HASH_CACHE": str(notes)})
    refused(code, output, notes, "CDEIT_HASH_CACHE")
    assert snapshot(tmp_path) == before and notes.read_text() == "my notes\n"


# --------------------------------------------------------------------------------------------- hang


def test_hang_prepare_with_99999_workers_is_refused(world: World, tmp_path: Path) -> None:
    code, output = cli("data", "prepare", "--cifar10", world.cifar, "--out", tmp_path / "d", "--corruptions",
                       "generate", "--workers", "99999")  # fmt: skip
    refused(code, output, "--workers")
    assert not (tmp_path / "d").exists()


def test_hook_values_are_sentences_not_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """test_seconds: a negative or non-numeric value is a CdeitError naming the variable."""
    from cdeit.common.atomic import test_seconds
    from cdeit.common.errors import CdeitError

    monkeypatch.setenv("CDEIT_TESTING", "1")
    monkeypatch.setenv("CDEIT_TEST_SHARD_PAUSE_S", "-1")
    with pytest.raises(CdeitError, match="CDEIT_TEST_SHARD_PAUSE_S"):
        test_seconds("CDEIT_TEST_SHARD_PAUSE_S")
    monkeypatch.setenv("CDEIT_TESTING", "")
    assert test_seconds("CDEIT_TEST_SHARD_PAUSE_S") == 0.0
    assert np.isfinite(test_seconds("CDEIT_TEST_SHARD_PAUSE_S"))
