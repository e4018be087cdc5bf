"""Runs, studies and model files are untrusted input (issue 25): a run, study or model from a collaborator can never
make cdeit write outside the command's own output, import code, reuse stale or damaged numbers, replace a file that
is not the command's, hang, or fail without naming the file and key.

Each case copies the world's good files into its own folder, damages one thing, runs the real command line and
asserts the exit code, the file, key or option the sentence names, and that nothing outside the named output
changed. Classes (docs/reliability.md): escape, code, silent, lost, hang, unhelpful.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.runner import snapshot
from tests.reliability.test_untrusted import cli, copy, edit, refused
from tests.reliability.world import TRAIN_ARGS, World


@pytest.fixture(scope="module")
def evaluated(world: World, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world's run, evaluated on test (RUN/eval/test.json, predictions, report), built once for the module."""
    run = copy(world.run, tmp_path_factory.mktemp("evaluated") / "run")
    code, output = cli("evaluate", run, "--device", "cpu", "--batch-size", "32", "--workers", "1")
    assert code == 0, output
    return run


def marker_module(tmp_path: Path) -> tuple[Path, Path]:
    """A teacher module that, if ever imported, writes a marker file (so a test proves it never ran)."""
    marker = tmp_path / "imported.txt"
    module = tmp_path / "evil_teacher.py"
    module.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return module, marker


def _write_model(src: Path, dst: Path, change) -> Path:
    """A copy of safetensors file `src` at `dst` with its metadata and `change(tensors)` applied."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as fh:
        metadata = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    change(tensors)
    save_file(tensors, str(dst), metadata)
    return dst


def _nan(tensors: dict) -> None:
    key = sorted(k for k in tensors if tensors[k].is_floating_point())[0]
    tensors[key][...] = float("nan")


# --------------------------------------------------------------------------------------------- escape


@pytest.mark.parametrize("link", ["eval", "eval/report.md"])
def test_escape_evaluate_through_a_symlink_out_of_the_run(
    world: World, evaluated: Path, tmp_path: Path, link: str
) -> None:
    """RUN/eval (or a report in it) linked into another run's folder is refused: evaluate never writes there."""
    run, victim = copy(world.run, tmp_path / "run"), copy(evaluated, tmp_path / "victim")
    target = victim / link
    if link == "eval":
        (run / "eval").symlink_to(target, target_is_directory=True)
    else:
        (run / "eval").mkdir()
        (run / link).symlink_to(target)
    before = snapshot(tmp_path)
    code, output = cli("evaluate", run, "--device", "cpu", "--batch-size", "32", "--workers", "1")
    refused(code, output, run / link)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["data", "cache"])
def test_escape_train_out_into_a_dataset_or_cache(world: World, tmp_path: Path, kind: str) -> None:
    target = copy(getattr(world, kind), tmp_path / kind)
    before = snapshot(tmp_path)
    code, output = cli("train", "--data", world.data, *TRAIN_ARGS, "--out", target)
    refused(code, output, "--out", target)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["another run", "a dataset"])
def test_escape_export_into_another_kind_of_folder(world: World, tmp_path: Path, where: str) -> None:
    folder = copy(world.run if where == "another run" else world.data, tmp_path / "folder")
    before = snapshot(tmp_path)
    code, output = cli("export", world.run, "--to", folder / "sub" / "x.safetensors")
    refused(code, output, "--to", folder)
    assert snapshot(tmp_path) == before


def test_escape_plan_run_name_outside_the_study(world: World, evaluated: Path, tmp_path: Path) -> None:
    """plan.json naming a run `../../x` is refused before compare reads outside STUDY/runs."""
    study = tmp_path / "study"
    copy(evaluated, study / "runs" / "a-s0-00000000")
    runs = [{"group": "a", "seed": 0, "overrides": {}, "settings": {}, "name": "../../outside"}]
    (study / "plan.json").write_text(json.dumps({"runs": runs}))
    before = snapshot(tmp_path)
    code, output = cli("compare", study, "--out", tmp_path / "cmp")
    refused(code, output, study / "plan.json", "runs[0].name")
    assert snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------- code


def test_code_resume_never_imports_the_runs_teacher_module(world: World, tmp_path: Path) -> None:
    module, marker = marker_module(tmp_path)
    run = copy(world.run, tmp_path / "run")
    edit(run / "config.json", lambda c: c.update(teacher_module=str(module)))
    before = snapshot(tmp_path)
    code, output = cli("train", "--resume", run)
    refused(code, output, run / "config.json", "teacher_module", "--teacher-module")
    assert not marker.exists() and snapshot(tmp_path) == before


def test_code_train_config_file_never_imports_its_teacher_module(world: World, tmp_path: Path) -> None:
    module, marker = marker_module(tmp_path)
    config = tmp_path / "config.json"
    shutil.copy(world.run / "config.json", config)
    edit(config, lambda c: c.update(teacher_module=str(module), out=str(tmp_path / "new")))
    before = snapshot(tmp_path)
    code, output = cli("train", "--config", config)
    refused(code, output, config, "teacher_module")
    assert not marker.exists() and snapshot(tmp_path) == before


@pytest.mark.parametrize("dry_run", [True, False])
def test_code_sweep_never_imports_the_studys_teacher_module(world: World, tmp_path: Path, dry_run: bool) -> None:
    module, marker = marker_module(tmp_path)
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'[study]\nout = "{tmp_path / "study"}"\n[shared]\ndata = "{world.data}"\nteacher_cache = "{world.cache}"\n'
        f'distill = "soft"\nonline_teacher = true\nteacher_module = "{module}"\nepochs = 1\ndevice = "cpu"\n'
    )
    before = snapshot(tmp_path)
    code, output = cli("sweep", spec, *(["--dry-run"] if dry_run else []))
    refused(code, output, spec, "teacher_module", "--teacher-module")
    assert not marker.exists() and snapshot(tmp_path) == before


# --------------------------------------------------------------------------------------------- silent


def _flip_tensor_bit(path: Path) -> None:
    """Flip one bit inside the largest tensor's stored bytes (the zip stores them uncompressed)."""
    import torch

    payload = torch.load(path, weights_only=True)
    tensors = [v for v in payload["model"].values() if isinstance(v, torch.Tensor)]
    raw = max(tensors, key=lambda t: t.numel()).contiguous().numpy().tobytes()
    data = bytearray(path.read_bytes())
    at = data.find(raw)
    assert at >= 0
    data[at + len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_silent_resume_refuses_a_checkpoint_with_a_flipped_bit(world: World, tmp_path: Path) -> None:
    run = copy(world.run, tmp_path / "run")
    _flip_tensor_bit(run / "checkpoints" / "last.pt")
    before = snapshot(tmp_path)
    code, output = cli("train", "--resume", run, "--epochs", "2")
    refused(code, output, run / "checkpoints" / "last.pt", "sha256")
    changed = {k for k, v in snapshot(tmp_path).items() if before.get(k) != v}
    assert changed <= {"run/.cdeit.lock"}, changed  # nothing of the run was rewritten


@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "initial-checkpoint"])
def test_silent_non_finite_weights_are_refused(world: World, tmp_path: Path, command: str) -> None:
    run = copy(world.run, tmp_path / "run")
    _write_model(run / "model.safetensors", run / "model.safetensors", _nan)
    before = snapshot(tmp_path)
    argv = {
        "evaluate": ["evaluate", run, "--device", "cpu", "--batch-size", "32", "--workers", "1"],
        "predict": ["predict", world.image, "--model", run],
        "export": ["export", run, "--to", tmp_path / "out" / "m.safetensors"],
        "initial-checkpoint": [
            "train",
            "--data",
            world.data,
            *TRAIN_ARGS,
            "--out",
            tmp_path / "new",
            "--initial-checkpoint",
            run,
        ],  # fmt: skip
    }[command]
    code, output = cli(*argv)
    refused(code, output, run / "model.safetensors", "NaN")
    assert not (tmp_path / "new").exists() and not (tmp_path / "out").exists()
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("run/eval")} == before


def test_silent_stale_baseline_predictions_are_recomputed(world: World, evaluated: Path, tmp_path: Path) -> None:
    """B's saved predictions record its model's sha256: after B's model changes, --baseline B evaluates B again."""
    from cdeit.train.core.weights import sha256_file

    base = copy(evaluated, tmp_path / "base")
    old = json.loads((base / "eval" / "test.json").read_text())["checkpoint"]["sha256"]
    _write_model(base / "model.safetensors", base / "model.safetensors",
                 lambda t: t.update({k: -v for k, v in t.items() if k.startswith("head.")}))  # fmt: skip
    new = sha256_file(base / "model.safetensors")
    assert new != old
    run = copy(world.run, tmp_path / "run")
    code, output = cli("evaluate", run, "--baseline", base, "--device", "cpu", "--batch-size", "32", "--workers", "1")
    assert code == 0, output
    assert json.loads((base / "eval" / "test.json").read_text())["checkpoint"]["sha256"] == new


def test_silent_16_bit_png_is_scaled_not_clipped(world: World, tmp_path: Path) -> None:
    from PIL import Image

    from cdeit.train.use.deploy import load_image

    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((40, 40), 32768, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = load_image(path)
    assert pixels.shape == (32, 32, 3) and abs(int(pixels.mean()) - 128) <= 1
    code, output = cli("predict", path, "--model", world.run)
    assert code == 0, output


# --------------------------------------------------------------------------------------------- lost


@pytest.mark.parametrize("name", ["config", "model"])
def test_lost_export_never_replaces_a_file_it_does_not_own(world: World, tmp_path: Path, name: str) -> None:
    """--to RUN/config.safetensors would replace RUN/config.json; --to RUN/model.safetensors the run's model."""
    run = copy(world.run, tmp_path / "run")
    before = snapshot(tmp_path)
    code, output = cli("export", run, "--to", run / f"{name}.safetensors")
    refused(code, output, "--to", run / (f"{name}.json" if name == "config" else "model.safetensors"))
    assert snapshot(tmp_path) == before


def test_lost_export_over_an_earlier_export_is_allowed(world: World, tmp_path: Path) -> None:
    to = tmp_path / "m.safetensors"
    for _ in range(2):
        code, output = cli("export", world.run, "--to", to)
        assert code == 0, output


# --------------------------------------------------------------------------------------------- hang


def test_hang_predict_on_a_named_pipe(world: World, tmp_path: Path) -> None:
    pipe = tmp_path / "pipe.png"
    os.mkfifo(pipe)
    code, output = cli("predict", pipe, world.image, "--model", world.run)
    assert code == 1 and str(pipe) in output and "failed unexpectedly" not in output, output


@pytest.mark.parametrize("table", ["[study]\nseeds = 200000\n", "[axes]\n" + "".join(
    f"{k} = [{', '.join(str(i) for i in range(1, 11))}]\n"
    for k in ("epochs", "batch_size", "eval_every", "eval_batch_size", "seed"))])  # fmt: skip
def test_hang_study_with_an_absurd_number_of_runs(world: World, tmp_path: Path, table: str) -> None:
    spec = tmp_path / "s.toml"
    spec.write_text(f'[shared]\ndata = "{world.data}"\ndevice = "cpu"\n{table}')
    before = snapshot(tmp_path)
    code, output = cli("sweep", spec, "--dry-run")
    refused(code, output, spec, "10,000")
    assert snapshot(tmp_path) == before


def test_hang_plan_with_an_absurd_number_of_runs(world: World, tmp_path: Path) -> None:
    study = tmp_path / "study"
    study.mkdir()
    run = {"group": "a", "seed": 0, "overrides": {}, "settings": {}, "name": "a"}
    (study / "plan.json").write_text(json.dumps({"runs": [run] * 10_001}))
    code, output = cli("compare", study, "--out", tmp_path / "cmp")
    refused(code, output, study / "plan.json")
    assert not (tmp_path / "cmp").exists()


# --------------------------------------------------------------------------------------------- unhelpful


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--min-lr", "1e308"),
        ("--warmup-lr", "1e308"),
        ("--lr-per-512", "1e308"),
        ("--epochs", str(10**9)),
        ("--batch-size", str(10**12)),
        ("--eval-batch-size", str(10**12)),
    ],  # fmt: skip
)
def test_unhelpful_absurd_training_numbers(world: World, tmp_path: Path, option: str, value: str) -> None:
    code, output = cli("train", "--data", world.data, *TRAIN_ARGS, option, value, "--out", tmp_path / "run")
    refused(code, output, option)
    assert not (tmp_path / "run").exists()


def _damage(key: str, how: str):
    def change(obj: dict) -> None:
        *path, last = key.split(".")
        for part in path:
            obj = obj[part]
        if how == "drop":
            del obj[last]
        else:
            obj[last] = ["not", "this"]

    return change


CONFIG_CASES = [("data", "evaluate"), ("student", "evaluate"), ("distill", "evaluate"), ("seed", "compare"),
                ("student", "compare"), ("distill", "compare"), ("head_strategy", "evaluate"),
                ("teacher_cache", "compare")]  # fmt: skip


@pytest.mark.parametrize(("key", "command"), CONFIG_CASES)
@pytest.mark.parametrize("how", ["drop", "retype"])
def test_unhelpful_run_config_keys_are_named(evaluated: Path, tmp_path: Path, key: str, command: str, how: str) -> None:
    run = copy(evaluated, tmp_path / "run")
    if how == "drop" and key in ("head_strategy", "teacher_cache"):
        pytest.skip("an optional key: absent means its default")
    edit(run / "config.json", _damage(key, how))
    before = snapshot(tmp_path)
    argv = ["evaluate", run, "--device", "cpu"] if command == "evaluate" else ["compare", run, "--out", tmp_path / "c"]
    code, output = cli(*argv)
    refused(code, output, run / "config.json", key)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key", ["parameters", "train_images_per_s", "train_seconds", "steps"])
@pytest.mark.parametrize("how", ["drop", "retype"])
def test_unhelpful_summary_keys_are_named(evaluated: Path, tmp_path: Path, key: str, how: str) -> None:
    run = copy(evaluated, tmp_path / "run")
    edit(run / "summary.json", _damage(key, how))
    before = snapshot(tmp_path)
    code, output = cli("compare", run, "--out", tmp_path / "c")
    refused(code, output, run / "summary.json", key)
    assert snapshot(tmp_path) == before


RESULT_CASES = ["data", "fingerprint", "accuracy", "ece", "per_corruption", "per_corruption.clean.accuracy",
                "clean.accuracy", "teacher_cache", "checkpoint"]  # fmt: skip


@pytest.mark.parametrize("key", RESULT_CASES)
@pytest.mark.parametrize("how", ["drop", "retype"])
def test_unhelpful_eval_json_keys_are_named(evaluated: Path, tmp_path: Path, key: str, how: str) -> None:
    run = copy(evaluated, tmp_path / "run")
    result = json.loads((run / "eval" / "test.json").read_text())
    optional = key in ("teacher_cache", "checkpoint") or key.startswith("clean")
    if how == "drop" and optional or (key == "teacher_cache" and key not in result):
        pytest.skip("an optional key: absent is allowed")
    edit(run / "eval" / "test.json", _damage(key, how))
    before = snapshot(tmp_path)
    code, output = cli("compare", run, "--out", tmp_path / "c")
    refused(code, output, run / "eval" / "test.json", key)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key", ["group", "seed", "overrides", "settings", "name", "preset", "baseline"])
def test_unhelpful_plan_keys_are_named(evaluated: Path, tmp_path: Path, key: str) -> None:
    study = tmp_path / "study"
    copy(evaluated, study / "runs" / "a")
    run = {"group": "a", "seed": 0, "overrides": {}, "settings": {}, "name": "a"}
    plan = {"runs": [run], "preset": None, "baseline": None}
    if key in ("preset", "baseline"):
        plan[key] = 7 if key == "baseline" else "table99"
    else:
        del run[key]
    (study / "plan.json").write_text(json.dumps(plan))
    before = snapshot(tmp_path)
    code, output = cli("compare", study, "--out", tmp_path / "c")
    refused(code, output, study / "plan.json", key)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("key", ["probs", "label"])
def test_unhelpful_predictions_arrays_are_named(world: World, evaluated: Path, tmp_path: Path, key: str) -> None:
    base = copy(evaluated, tmp_path / "base")
    npz = base / "eval" / "test-predictions.npz"
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files if k != key}
    np.savez(npz, **arrays)
    run = copy(world.run, tmp_path / "run")
    code, output = cli("evaluate", run, "--baseline", base, "--device", "cpu", "--batch-size", "32", "--workers", "1")
    refused(code, output, npz, key)


def test_unhelpful_export_sidecar_classes_are_named(world: World, tmp_path: Path) -> None:
    """A model file without class names takes them from its .json sidecar: a mistyped list is named."""
    model = _write_model(world.model, tmp_path / "m.safetensors", lambda t: None)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(model), framework="pt") as fh:
        meta = {k: v for k, v in fh.metadata().items() if k != "cdeit.classes"}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    save_file(tensors, str(model), meta)
    (tmp_path / "m.json").write_text(json.dumps({"classes": [1, 2]}))
    code, output = cli("predict", world.image, "--model", model)
    refused(code, output, tmp_path / "m.json", "classes")


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("CDEIT_DEBUG", raising=False)
    yield


def test_unhelpful_model_class_names_metadata_is_named(world: World, tmp_path: Path) -> None:
    """A model file whose cdeit.classes entry is not a list of names is refused, not numbered silently."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = tmp_path / "m.safetensors"
    with safe_open(str(world.model), framework="pt") as fh:
        meta = fh.metadata() | {"cdeit.classes": json.dumps({"not": "a list"})}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    save_file(tensors, str(model), meta)
    code, output = cli("predict", world.image, "--model", model)
    refused(code, output, model, "cdeit.classes")


@pytest.mark.parametrize("key", ["student", "epochs", "model_kwargs", "data"])
def test_unhelpful_resume_config_keys_are_named(world: World, tmp_path: Path, key: str) -> None:
    """`train --resume RUN` with a mistyped key in RUN/config.json names the file and the key (a key left out takes
    its default: settings added to cdeit later)."""
    run = copy(world.run, tmp_path / "run")
    edit(run / "config.json", _damage(key, "retype"))
    before = snapshot(tmp_path)
    code, output = cli("train", "--resume", run)
    refused(code, output, run / "config.json", key)
    assert snapshot(tmp_path) == before
