"""The teacher run online on each augmented batch (`cdeit train --online-teacher`), the way DeiT and timm distil.

The cache's own teacher is rebuilt: its name, weights (proved by the cache's weights hash), preprocessing and
10-way head (CACHE/head.safetensors, proved by the cache's head hash) come from the cache, so the online teacher is
exactly the one whose logits the cache holds. At every step the student's batch is erased and mixed first,
then the teacher reads that very batch: the student's normalised images mapped back to pixels,
upsampled and normalised for the teacher on the device (common.preprocess, as every cache row), then pre-logit
features in float16 and the head in float64, as `precompute-teacher` computes a cache's logits. Its logits are
the teacher target as they are (soft: softmax(z / tau), hard: argmax), not mixed: the teacher saw the mixed
image. It costs a teacher forward per training image per epoch, which is what the cache exists to avoid; it is
the reference arm of docs/consistent-views.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cdeit.common.console import console
from cdeit.common.errors import CdeitError
from cdeit.train.core.config import TrainConfig

if TYPE_CHECKING:
    from cdeit.common.head import LinearHead
    from cdeit.common.teacher import Teacher
    from cdeit.train.core.augment import Augment
    from cdeit.train.core.mixing import Targets
    from cdeit.train.core.models import Normalise


class OnlineTeacher:
    """A `TeacherSource` (train/core/teachers.py) that runs a frozen teacher and its linear head on the device.

    `logits(pixels)` reads images on a 0..255 scale (the loader's uint8 batch, unaugmented);
    `teach_augmented(images)` reads the student's augmented, normalised batch, which `targets` passes it after the
    erasing and Mixup. `amp`: bf16 autocast for the teacher's forward (CUDA).
    """

    view = "augmented"
    fields = ("image",)

    def __init__(self, teacher: Teacher, head: LinearHead, normalise: Normalise, device: torch.device, amp: bool):
        from cdeit.common.preprocess import DeviceResize

        cuda = device.type == "cuda"
        self.device, self.amp = device, amp and cuda
        self.model = teacher.model.to(device).eval().requires_grad_(False)
        if cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.resize = DeviceResize(teacher.preprocessing, device, channels_last=cuda)
        self.weight = head.weight.to(device, torch.float64)  # (C, D)
        self.bias = head.bias.to(device, torch.float64)
        # the student's normalised x back to pixels 0..255: x * std * 255 + mean * 255 (Normalise's inverse)
        self.pixel_scale = (1.0 / normalise.inv_std).to(device)
        self.pixel_shift = normalise.mean.to(device)
        self.shapes = {"logits": (int(self.weight.shape[0]),)}

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) images on a 0..255 scale (uint8 or float) -> (B, C) float32 teacher logits."""
        x = self.resize(pixels)  # float32 resize, clamp to 0..255 and normalisation, outside autocast
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            features = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        features = features.to(torch.float16).double()  # the cache's float16 features, then its float64 head
        return (features @ self.weight.T + self.bias).float()

    def start_epoch(self, epoch: int) -> None:
        """The teacher is the same every epoch."""

    def targets(self, batch: Mapping[str, torch.Tensor], augment: Augment) -> tuple[torch.Tensor, Targets]:
        """The student's erased and mixed batch, then the teacher's logits on it as the (unmixed) teacher target."""
        images, targets = augment(batch["image"], augment.targets(batch, distill="none"))
        return images, augment.with_teacher(targets, self.teach_augmented(images))

    def teach_augmented(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's logits on the student's erased and mixed batch (normalised as the student reads it)."""
        return self.logits(images.detach().float() * self.pixel_scale + self.pixel_shift)

    def describe(self) -> str:
        return "run online on every erased and mixed batch"


def load_online_teacher(cfg: TrainConfig, device: torch.device, normalise: Normalise) -> OnlineTeacher:
    """The teacher of cache `cfg.teacher_cache`, rebuilt and proved equal to it, or one sentence saying why not."""
    from cdeit.common.cache import HEAD_FILE, load_teacher_targets, read_cache_manifest, views_of
    from cdeit.common.head import load_head
    from cdeit.common.teacher import build_teacher

    cache = Path(str(cfg.teacher_cache))
    prov = read_cache_manifest(cache)["provenance"]
    if views_of(prov):
        raise CdeitError(
            f"cache {cache} holds K augmented views, which train replays; --online-teacher needs a plain cache "
            "(`precompute-teacher` without --views) to rebuild its teacher from."
        )
    if prov.get("view", "same") != "same":
        raise CdeitError(
            f"cache {cache} is a {prov['view']}-view cache (the teacher on each clean source photograph); "
            "--online-teacher runs the teacher on the student's own augmented images: use a --view same cache."
        )
    if prov.get("random_weights"):
        raise CdeitError(
            f"cache {cache} was computed with random teacher weights, which --online-teacher cannot rebuild; "
            "precompute from a checkpoint file and pass it as --teacher-checkpoint."
        )
    load_teacher_targets(cache, cfg.data, "train", "cpu", ("logits",))  # the cache belongs to this data
    module = prov.get("teacher_module")
    if module and not cfg.teacher_module:
        raise CdeitError(
            f"cache {cache}'s teacher {prov['teacher']} comes from --teacher-module {module}; pass the same file "
            "as --teacher-module FILE."
        )
    _check_module_file(cache, prov, cfg)  # before the file is imported, which runs its code
    if not (cache / HEAD_FILE).is_file() or not prov.get("head_hash"):
        raise CdeitError(
            f"cache {cache} has no {HEAD_FILE} (or no head_hash) to rebuild its teacher's head from; run "
            f"`cdeit cache verify {cache}` and finish or recompute the cache."
        )
    # the name asked for at precompute (`name.tag`, `hf-hub:org/repo`) finds the same weights; a checkpoint file
    # loads into the architecture's name
    name = _teacher_name(cache, prov, cfg)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # build_teacher seeds torch:
        teacher = build_teacher(name, cfg.teacher_checkpoint, module=cfg.teacher_module)  # keep the run's stream
    _check_same_teacher(cache, prov, teacher, cfg)
    head = load_head(cache / HEAD_FILE, teacher, len(prov["classes"]))
    if head.hash != prov["head_hash"]:
        raise CdeitError(
            f"{cache / HEAD_FILE} (head {head.hash[:19]}) is not the head of cache {cache}'s logits "
            f"({prov['head_hash'][:19]}); run `cdeit cache verify {cache}`."
        )
    amp = cache_amp(prov)
    console.print(
        f"teacher: {teacher.name} online on every augmented batch ({teacher.weights_source}; weights and head "
        f"of cache {cache}, {'bf16' if amp and device.type == 'cuda' else 'float32'})"
    )
    return OnlineTeacher(teacher, head, normalise, device, amp)


def _teacher_name(cache: Path, prov: Mapping[str, Any], cfg: TrainConfig) -> str:
    """The timm name to rebuild the cache's teacher from. A cache is a shared file, so what it records never picks a
    folder or a download: the architecture's plain timm name, and the recorded spelling (`name.tag`,
    `hf-hub:org/repo`, never `local-dir:PATH`) only when those weights are already in the local Hugging Face cache."""
    from cdeit.common.hub import timm_weights_in_cache

    teacher, spec = prov.get("teacher"), prov.get("teacher_spec")
    if not isinstance(teacher, str) or not teacher or ":" in teacher:
        raise CdeitError(
            f"{cache / 'manifest.json'} records teacher {teacher!r}, which is not a plain timm name; --online-teacher "
            "rebuilds only a named timm architecture: recompute the cache or train from it without --online-teacher."
        )
    if cfg.teacher_checkpoint or not spec or spec == teacher:
        return teacher
    if not isinstance(spec, str) or spec.startswith("local-dir:") or timm_weights_in_cache(spec) is None:
        raise CdeitError(
            f"{cache / 'manifest.json'} records teacher_spec {spec!r}, whose weights are not in the local Hugging "
            "Face cache; a cache never chooses a folder or a download for --online-teacher: pass the weights file "
            "as --teacher-checkpoint FILE."
        )
    return spec


def cache_amp(provenance: Mapping[str, Any]) -> bool:
    """Whether the cache's teacher ran under bf16 autocast (a CUDA precompute records "bfloat16-autocast")."""
    return str(provenance.get("compute_dtype", "")).startswith("bfloat16")


def _check_module_file(cache: Path, prov: Mapping[str, Any], cfg: TrainConfig) -> None:
    """A --teacher-module file has the sha256 the cache recorded (a dotted module name is checked after import)."""
    path = Path(cfg.teacher_module or "")
    from cdeit.common.dataset import file_sha256

    want = prov.get("teacher_module_sha256")
    if not (cfg.teacher_module and want and path.is_file()):
        return
    have = "sha256:" + file_sha256(path)  # the form TeacherModule.sha256 and the cache record
    if have != want:
        raise CdeitError(
            f"--teacher-module {cfg.teacher_module} is not the file cache {cache} was computed with "
            f"(sha256 {have[:19]}, cache {want[:19]}); pass that file."
        )


def _check_same_teacher(cache: Path, prov: Mapping[str, Any], teacher: Teacher, cfg: TrainConfig) -> None:
    """The rebuilt teacher has the cache's module, weights and preprocessing, one sentence per difference."""
    if teacher.module is not None and prov.get("teacher_module_sha256") not in (None, teacher.module.sha256):
        raise CdeitError(
            f"--teacher-module {cfg.teacher_module} is not the module cache {cache} was computed with "
            f"(sha256 {teacher.module.sha256[:19]}, cache {prov['teacher_module_sha256'][:19]}); pass that one."
        )
    if teacher.weights_hash != prov["weights_hash"]:
        given = f"--teacher-checkpoint {cfg.teacher_checkpoint}" if cfg.teacher_checkpoint else teacher.weights_source
        raise CdeitError(
            f"the teacher weights from {given} ({teacher.weights_hash[:19]}) are not those of cache {cache} "
            f"({prov['weights_hash'][:19]}, {prov.get('weights_source', 'unknown source')}); pass that checkpoint "
            "as --teacher-checkpoint FILE."
        )
    prep = teacher.preprocessing.attrs()
    differs = [k for k in ("input_size", "interpolation", "mean", "std") if k in prov and prov[k] != prep[k]]
    if differs:
        raise CdeitError(
            f"the rebuilt teacher preprocesses differently from cache {cache} ({', '.join(differs)}); "
            "use the cdeit and timm versions the cache was computed with."
        )
