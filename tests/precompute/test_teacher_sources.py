"""Teachers from anywhere, offline (docs/precompute.md recipes): official checkpoints, a local HF cache, local-dir:,
hf-hub:, and a model of the user's own (--teacher-module). Every file the tests need is built here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import timm.models
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from cdeit.common.cli import app
from cdeit.common.errors import CdeitError
from cdeit.common.hub import timm_weights_in_cache
from cdeit.common.preprocess import DeviceResize
from cdeit.common.teacher import build_teacher, import_teacher_module, own_head
from tests.precompute.helpers import fake_hf_cache

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cifar_resnet.py"


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HF cache used for this test only, with HF_HUB_OFFLINE on (huggingface_hub reads both at import)."""
    root = tmp_path / "hf" / "hub"
    root.mkdir(parents=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return root


@pytest.fixture(scope="module")
def trained_vit() -> torch.nn.Module:
    """A test_vit other than the seed-0 init, standing for downloaded weights."""
    torch.manual_seed(123)
    return timm.create_model("test_vit.r160_in1k")


def test_same_weights_from_cache_hub_name_local_dir_and_file_give_one_identity(
    trained_vit: torch.nn.Module, hf_cache: Path, tmp_path: Path
) -> None:
    snapshot = fake_hf_cache(hf_cache, "timm/test_vit.r160_in1k", trained_vit)
    timm.models.save_for_hf(trained_vit, str(tmp_path / "folder"), safe_serialization=True)
    save_file(trained_vit.state_dict(), str(tmp_path / "w.safetensors"))
    teachers = {
        "name": build_teacher("test_vit"),  # the default tag's hub repo, found in the offline cache
        "name.tag": build_teacher("test_vit.r160_in1k"),
        "hf-hub": build_teacher("hf-hub:timm/test_vit.r160_in1k"),
        "local-dir": build_teacher(f"local-dir:{tmp_path / 'folder'}"),
        "file": build_teacher("test_vit", tmp_path / "w.safetensors"),
    }
    expected = trained_vit.state_dict()["blocks.0.attn.qkv.weight"]
    for form, t in teachers.items():
        assert t.name == "test_vit" and not t.random_weights, form
        assert torch.equal(t.model.state_dict()["blocks.0.attn.qkv.weight"], expected), form
        assert t.preprocessing == teachers["file"].preprocessing, form
    assert len({t.weights_hash for t in teachers.values()}) == 1
    assert "local Hugging Face cache" in teachers["name"].weights_source
    assert timm_weights_in_cache("test_vit") == snapshot / "model.safetensors"
    assert build_teacher("test_vit", random_weights=True).weights_hash != teachers["name"].weights_hash


def test_offline_without_the_weights_in_the_cache_is_one_sentence(hf_cache: Path) -> None:
    with pytest.raises(CdeitError, match=r"HF_HUB_OFFLINE is set and the Hugging Face cache .* holds no weights for"):
        build_teacher("test_vit")
    with pytest.raises(CdeitError, match=r"HF_HUB_OFFLINE is set .* hf-hub:timm/test_vit.r160_in1k"):
        build_teacher("hf-hub:timm/test_vit.r160_in1k")


@pytest.mark.slow  # DeiT-III Small itself (22M parameters): about 6 s on 2 cores
def test_official_deit3_checkpoint_loads_through_timms_filter(tmp_path: Path) -> None:
    """facebookresearch's layout: {"model": ...} with blocks.N.gamma_1/2, which timm's deit filter renames."""
    torch.manual_seed(7)
    ours = timm.create_model("deit3_small_patch16_224").state_dict()
    official = {k.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2"): v for k, v in ours.items()}
    assert "blocks.0.gamma_1" in official and not any(".ls1." in k for k in official)
    torch.save({"model": official}, tmp_path / "deit_3_small_224_21k.pth")
    save_file(ours, str(tmp_path / "timm_layout.safetensors"))
    teacher = build_teacher("deit3_small_patch16_224", tmp_path / "deit_3_small_224_21k.pth")
    assert torch.equal(teacher.model.state_dict()["blocks.3.ls1.gamma"], ours["blocks.3.ls1.gamma"])
    same = build_teacher("deit3_small_patch16_224", tmp_path / "timm_layout.safetensors")
    assert teacher.weights_hash == same.weights_hash


def test_tags_and_sources_are_checked_before_loading(tmp_path: Path) -> None:
    with pytest.raises(CdeitError, match=r"timm's test_vit has no pretrained tag 'nonsense'"):
        build_teacher("test_vit.nonsense", random_weights=True)
    with pytest.raises(CdeitError, match=r"holds no config.json"):
        build_teacher(f"local-dir:{tmp_path}")
    with pytest.raises(CdeitError, match=r"not a name timm accepts .*Unknown model source"):
        build_teacher("hf_hubx:timm/test_vit")
    with pytest.raises(CdeitError, match=r"--checkpoint loads weights into a timm name"):
        build_teacher("hf-hub:timm/test_vit.r160_in1k", tmp_path / "w.safetensors")


def test_cifar_resnet_module_registers_the_readme_layout() -> None:
    module = import_teacher_module(str(EXAMPLE))
    assert module.name == "cifar_resnet" and module.sha256.startswith("sha256:") and module.path == EXAMPLE
    model = timm.create_model("resnet20_cifar")
    keys = set(model.state_dict())
    for layer in ("layer1", "layer2", "layer3"):
        for b in range(3):
            for part in ("conv1.weight", "bn1.weight", "bn1.running_var", "conv2.weight", "bn2.num_batches_tracked"):
                assert f"{layer}.{b}.{part}" in keys
        assert not any(k.startswith(f"{layer}.0.shortcut") or k.startswith(f"{layer}.0.downsample") for k in keys)
    assert {"conv1.weight", "bn1.bias", "linear.weight", "linear.bias"} <= keys and not any("fc." in k for k in keys)
    assert len(keys) == 116 and sum(p.numel() for p in model.parameters()) == 269_722  # the paper's 0.27M
    deep = timm.create_model("resnet56_cifar")
    assert sum(p.numel() for p in deep.parameters()) == 853_018  # 0.85M
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape == (2, 64, 8, 8) and model(x).shape == (2, 10)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 64)


def test_shortcut_subsamples_and_zero_pads_evenly() -> None:
    import_teacher_module(str(EXAMPLE))
    block = timm.create_model("resnet20_cifar").layer2[0]
    x = torch.randn(1, 16, 32, 32)
    padded = block.shortcut(x)
    assert padded.shape == (1, 32, 16, 16)
    assert torch.equal(padded[:, 8:24], x[:, :, ::2, ::2]) and not padded[:, :8].any() and not padded[:, 24:].any()


def test_own_module_teacher_preprocesses_from_its_pretrained_cfg_and_tolerates_old_batchnorm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import_teacher_module(str(EXAMPLE))
    torch.manual_seed(3)
    state = timm.create_model("resnet20_cifar").state_dict()
    save_file(state, str(tmp_path / "new.safetensors"))
    save_file({k: v for k, v in state.items() if "num_batches_tracked" not in k}, str(tmp_path / "old.safetensors"))
    new = build_teacher("resnet20_cifar", tmp_path / "new.safetensors", module=str(EXAMPLE))
    assert "num_batches_tracked" not in capsys.readouterr().err  # the log goes to stderr
    old = build_teacher("resnet20_cifar", tmp_path / "old.safetensors", module=str(EXAMPLE))
    assert "no num_batches_tracked for 19 of 19 BatchNorm layers" in " ".join(capsys.readouterr().err.split())
    assert old.weights_hash == new.weights_hash and old.module == new.module and old.module.name == "cifar_resnet"
    prep = old.preprocessing
    assert prep.input_size == (32, 32) and prep.interpolation == "nearest" and prep.mean == (0.485, 0.456, 0.406)
    head = own_head(old)
    assert head is not None and torch.equal(head["weight"], state["linear.weight"])
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    mean, std = torch.tensor(prep.mean).view(1, 3, 1, 1), torch.tensor(prep.std).view(1, 3, 1, 1)
    torch.testing.assert_close(DeviceResize(prep, "cpu")(images), (images / 255 - mean) / std)  # 32px: unresized


def test_module_entrypoint_that_ignores_pretrained_is_loaded_by_timm(tmp_path: Path) -> None:
    """A plain nn.Module entrypoint (ignores `pretrained`): timm's load_checkpoint loads the file, with the module's
    checkpoint_filter_fn; keys that do not fit are refused naming the key (issue 23; it was refused outright)."""
    code = (
        "from timm.models import register_model\nfrom torch import nn\n\n"
        "class Tiny(nn.Module):\n    def __init__(self, num_classes=10, **kwargs):\n        super().__init__()\n"
        "        self.body = nn.Linear(4, 4)\n        self.head = nn.Linear(4, num_classes)\n"
        "        self.num_features, self.num_classes = 4, num_classes\n\n"
        "def checkpoint_filter_fn(state, model):\n    return {k.removeprefix('net.'): v for k, v in state.items()}\n\n"
        "@register_model\ndef careless_net(pretrained=False, **kwargs):\n    return Tiny(**kwargs)\n"
    )
    (tmp_path / "careless.py").write_text(code)
    weights = {"net.body.weight": torch.full((4, 4), 0.5), "net.body.bias": torch.ones(4),
               "net.head.weight": torch.ones(10, 4), "net.head.bias": torch.ones(10)}  # fmt: skip
    save_file(weights, str(tmp_path / "w.safetensors"))
    model = build_teacher("careless_net", tmp_path / "w.safetensors", module=str(tmp_path / "careless.py")).model
    assert torch.equal(model.body.weight, weights["net.body.weight"]) and torch.equal(model.head.bias, torch.ones(10))
    save_file({"net.head.weight": torch.ones(10, 4), "net.head.bias": torch.ones(10), "net.other": torch.ones(2)},
              str(tmp_path / "bad.safetensors"))  # fmt: skip
    with pytest.raises(CdeitError, match="body.weight"):  # the key the file lacks
        build_teacher("careless_net", tmp_path / "bad.safetensors", module=str(tmp_path / "careless.py"))
    (tmp_path / "broken.py").write_text("import no_such_package_here\n")
    with pytest.raises(CdeitError, match=r"--teacher-module .*broken.py failed to import \(ModuleNotFoundError"):
        import_teacher_module(str(tmp_path / "broken.py"))
    with pytest.raises(CdeitError, match=r"--teacher-module no_such.module could not be imported"):
        import_teacher_module("no_such.module")


@pytest.mark.slow  # a real precompute run (6 s)
def test_cache_records_the_teacher_module(tiny_dataset: Path, tmp_path: Path) -> None:
    import_teacher_module(str(EXAMPLE))
    torch.manual_seed(5)
    save_file(timm.create_model("resnet20_cifar").state_dict(), str(tmp_path / "r20.safetensors"))
    args = ["precompute-teacher", "--data", str(tiny_dataset), "--out", str(tmp_path / "cache"),
            "--teacher-module", str(EXAMPLE), "--teacher", "resnet20_cifar", "--checkpoint",
            str(tmp_path / "r20.safetensors"), "--head", "none", "--batch-size", "32", "--shard-size", "64",
            "--workers", "1", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    provenance = json.loads((tmp_path / "cache" / "manifest.json").read_text())["provenance"]
    assert provenance["teacher"] == "resnet20_cifar" and provenance["teacher_module"] == "cifar_resnet"
    assert provenance["teacher_module_sha256"] == import_teacher_module(str(EXAMPLE)).sha256
    assert provenance["input_size"] == [32, 32] and provenance["interpolation"] == "nearest"
    info = CliRunner().invoke(app, ["cache", "info", str(tmp_path / "cache")])
    assert "teacher module" in info.output and "cifar_resnet (sha256:" in info.output


def test_help_lists_the_teacher_forms() -> None:
    result = CliRunner().invoke(app, ["precompute-teacher", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    for form in ("NAME.TAG", "hf-hub:ORG/REPO", "local-dir:/PATH", "--teacher-module", "HF_HUB_OFFLINE"):
        assert form in text, form


@pytest.mark.slow
def test_hf_home_and_offline_env_recipe(trained_vit: torch.nn.Module, tiny_dataset: Path, tmp_path: Path) -> None:
    """The documented recipe as a user runs it: HF_HOME=CACHE HF_HUB_OFFLINE=1 cdeit precompute-teacher ..."""
    fake_hf_cache(tmp_path / "hf" / "hub", "timm/test_vit.r160_in1k", trained_vit)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "cdeit.common.cli", "precompute-teacher", "--data", str(tiny_dataset),
           "--out", str(tmp_path / "cache"), "--teacher", "test_vit", "--batch-size", "32", "--shard-size", "64",
           "--head-epochs", "2", "--workers", "1", "--device", "cpu"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "weights found in the local Hugging Face cache" in " ".join((done.stdout + done.stderr).split())
    provenance = json.loads((tmp_path / "cache" / "manifest.json").read_text())["provenance"]
    assert provenance["random_weights"] is False and "local Hugging Face cache" in provenance["weights_source"]
