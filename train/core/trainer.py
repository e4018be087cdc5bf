"""`cdeit train`: train a ViT / DeiT / CdeiT student from packed images and cached teacher logits.

The teacher is never built here. Its logits are loaded once into a device tensor (N, classes) and
gathered with each batch's `index` field (or, for a clean-view cache, its `source` field); with `--align`
its feature targets are gathered the same way and compared with the student's (train/core/align.py). Mixup,
random erasing and normalisation run on whole batches on the device (train/core/augment.py). The Trainer sets
a run up, owns its checkpoints and runs the epochs; the step, the epoch and validation are train/core/engine.py's.
Checkpoints are atomic and hold every RNG state, so a killed run resumes exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from cdeit.common import distributed
from cdeit.common.atomic import write_json
from cdeit.common.console import console, progress_bar
from cdeit.common.dataset import beton_path, check_betons, image_size, load_manifest, make_loader
from cdeit.common.device import resolve_device
from cdeit.common.errors import CdeitError
from cdeit.common.tokens import TOKEN_TARGETS
from cdeit.train.core import rundir
from cdeit.train.core.align import Alignment
from cdeit.train.core.augment import Augment
from cdeit.train.core.checkpoint import not_this_run, read_checkpoint, save_checkpoint
from cdeit.train.core.config import TrainConfig
from cdeit.train.core.ema import EMA_FILE, ema_metrics, make_ema
from cdeit.train.core.engine import Engine, NonFiniteLoss, State, train_one_epoch, validate
from cdeit.train.core.losses import build_loss
from cdeit.train.core.models import Normalise, build_student, save_safetensors, sized_kwargs
from cdeit.train.core.notes import small_data_note
from cdeit.train.core.optim import build_optimizer, lr_schedule, param_groups
from cdeit.train.core.randaugment import randaugment_for
from cdeit.train.core.rundir import CHECKPOINT, io_error, prepare_run_dir
from cdeit.train.core.teachers import TeacherSource, load_teacher, teacher_temperature
from cdeit.train.core.timm_run import build_run_model
from cdeit.train.core.tracking import Tracker
from cdeit.train.core.weights import load_initial_checkpoint

TRAIN_FIELDS = ("image", "label", "corruption", "index")
PAPER_VIEWS = ("none", "same")  # the paper's teacher (or none): other views are beyond it, and say so


class Trainer:
    """One training run; `run()` trains (or resumes) to the end and writes the final model.

    `teacher` is the extension point for where the student's batches and teacher targets come from
    (train/core/teachers.py): by default what `cfg` names (its cache, replayed views, the online teacher or none);
    any `TeacherSource` (say a `CachedTeacher` over a table in memory) replaces it.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, teacher: TeacherSource | None = None):
        cfg = rundir.absolute_paths(cfg.validate())
        self.resume = resume
        env = distributed.dist_env()
        self.device = resolve_device(cfg.device, env.local_rank)
        self.autocast = self.device.type == "cuda" and cfg.precision == "bf16"
        self.cfg = cfg = dataclasses.replace(cfg, precision="bf16" if self.autocast else "fp32")  # what runs
        if cfg.batch_size % (env.world * cfg.grad_accum_steps):
            raise CdeitError(
                f"--batch-size {cfg.batch_size} does not divide over {env.world} processes x --grad-accum-steps "
                f"{cfg.grad_accum_steps}; use a multiple of {env.world * cfg.grad_accum_steps}."
            )
        self.dist = distributed.setup(env, self.device.type)
        self.out = prepare_run_dir(cfg, resume) if self.dist.main else Path(cfg.out)
        self.manifest = load_manifest(cfg.data)
        check_betons(cfg.data, self.manifest, ("train", "val"))  # the files themselves, not only the manifest
        self.num_classes = len(self.manifest["classes"])
        self.env = rundir.environment(cfg, self.device, env.world, from_cache=teacher is None)
        if resume and self.dist.main:
            rundir.check_identity(self.out, self.env)
        self.state = State()
        self.last_record: dict[str, Any] | None = None  # the last metrics line, kept in the checkpoint
        self.val_teacher: dict[str, torch.Tensor] = {}
        self.teacher_from_cache = teacher is None  # then the cache also holds the val logits of the diagnostics
        torch.manual_seed(cfg.seed + self.dist.rank)
        self._build(teacher)

    # ---------------------------------------------------------------- set-up
    def _build(self, teacher: TeacherSource | None) -> None:
        """Student, loss, augmentation, teacher, loader, alignment, optimizer and schedule, in the order that
        fixes what the run's seed draws (the student's and the projections' initialisation)."""
        cfg, dev = self.cfg, self.device
        kwargs = dict(cfg.model_kwargs, drop_path_rate=cfg.drop_path, drop_rate=cfg.dropout)
        kwargs.setdefault("num_classes", self.num_classes)
        kwargs = sized_kwargs(kwargs, image_size(self.manifest))  # input size and patch size from the dataset
        self.model = (build_run_model(cfg, self.num_classes) if cfg.model else
                      build_student(cfg.student, cfg.resolved_head_strategy(), **kwargs)).to(dev)  # fmt: skip
        self.model.set_return_heads(True)  # forward gives the losses every head; validation reads heads()
        if cfg.initial_checkpoint and not self.resume:  # (a resume's checkpoint holds the weights)
            note = load_initial_checkpoint(cfg.initial_checkpoint, self.model)  # every rank: the same start
            if self.dist.main:
                console.print(note)
        self.raw_model = self.model
        self.normalise = Normalise.for_model(self.model, dev)
        student = "vit" if cfg.model else cfg.student  # a --model run: the label loss of one head
        self.loss_fn = build_loss(student, cfg.distill, cfg.resolved_head_strategy(), tau=cfg.tau, lam=cfg.lam)
        self.augment = Augment(cfg, self.normalise, self.num_classes, dev, self.dist.rank)
        self.teacher = teacher if teacher is not None else load_teacher(cfg, dev, self.normalise)
        self.augment.temperature = teacher_temperature(
            cfg, teacher is None
        )  # --teacher-temperature: the cache's T unless set
        mean, seed = tuple((self.normalise.mean.flatten() / 255).tolist()), cfg.seed * 1000 + 700 + self.dist.rank
        self.augment.randaugment = randaugment_for(
            cfg.aa, self.teacher, mean, seed, image_size(self.manifest)
        )  # --aa; refused for K views
        self.batch_fields = (*TRAIN_FIELDS, *(k for k in self.teacher.fields if k not in TRAIN_FIELDS))
        self.train_loader = make_loader(
            beton_path(cfg.data, "train"), cfg.batch_size // (self.dist.world * cfg.grad_accum_steps), "random",
            str(dev),
            fields=self.batch_fields, drop_last=True,
            distributed=self.dist.enabled, seed=cfg.seed, workers=cfg.workers,
        )  # fmt: skip
        self.steps_per_epoch = len(self.train_loader) // cfg.grad_accum_steps  # optimizer steps
        if self.steps_per_epoch == 0:
            n = self.manifest["splits"]["train"]["count"]
            raise CdeitError(f"--batch-size {cfg.batch_size} is larger than the {n} training images; lower it.")
        self.alignment = self._alignment()
        groups = param_groups(self.model, cfg.weight_decay)
        if self.alignment is not None:  # the projections train with the student (decay on their matrices)
            for group, extra in zip(groups, self.alignment.param_groups(cfg.weight_decay), strict=True):
                group["params"] += extra["params"]
        self.optimizer = build_optimizer(groups, cfg, dev)  # --opt through timm's create_optimizer_v2
        self.ema = make_ema(cfg.model_ema, self.raw_model, cfg.model_ema_decay)  # before compile and DDP wrap it
        self.scheduler = lr_schedule(self.optimizer, cfg, self.steps_per_epoch)
        self.engine = self._engine()

    def _engine(self) -> Engine:
        """The step's parts, with the student compiled (CUDA by default) and wrapped for torchrun."""
        cfg, dev = self.cfg, self.device
        model, align_fn = self.model, self.alignment
        if cfg.compile if cfg.compile is not None else dev.type == "cuda":
            model = self.model = torch.compile(model)
        ids = [dev.index] if dev.type == "cuda" else None
        if self.dist.enabled:
            model = self.model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
            if align_fn is not None:  # its own DDP: the projections' gradients are averaged too
                align_fn = torch.nn.parallel.DistributedDataParallel(align_fn, device_ids=ids)
        # --clip-grad clips every parameter the optimizer steps: the student's, then the alignment's projections
        params = [*self.raw_model.parameters(), *(self.alignment.parameters() if self.alignment is not None else ())]
        return Engine(model, self.loss_fn, self.teacher, self.augment, self.optimizer, self.scheduler,
                      self.batch_fields, params, cfg.clip_grad, self.alignment, align_fn, self.autocast,
                      lr=self.optimizer.param_groups[0]["lr"], accum_steps=cfg.grad_accum_steps,
                      ema=self.ema).to(dev)  # fmt: skip

    def _alignment(self) -> Alignment | None:
        """The alignment terms and their projections (student width -> teacher width), or None without --align."""
        if not self.cfg.align:
            return None
        shapes, cells = self.teacher.shapes, self.raw_model.grid_size[0] * self.raw_model.grid_size[1]
        for name in TOKEN_TARGETS:
            if name in self.cfg.align and shapes[name][0] != cells:
                raise CdeitError(
                    f"--align {name} compares the teacher's {shapes[name][0]}-cell grid with this student's "
                    f"{cells} patches; use a student with an 8x8 patch grid (32px images, patch 4)."
                )
        dims = {k: shapes[k][-1] for k in ("embedding", "patches") if k in self.cfg.align}
        return Alignment(self.cfg.align, self.cfg.align_metric, self.raw_model.embed_dim, dims).to(self.device)

    @property
    def beyond_paper_teacher(self) -> bool:
        """A clean-view, replayed or online teacher, or an alignment: the runs whose console line and summary say so."""
        return self.teacher.view not in PAPER_VIEWS or bool(self.cfg.align)

    # ---------------------------------------------------------------- checkpoints
    def _rng_state(self) -> dict[str, torch.Tensor]:
        state = {"torch": torch.get_rng_state(), **self.augment.rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def save_checkpoint(self) -> None:
        """Model, optimizer, scheduler, RNG states, epoch and step; atomic (rank 0 only)."""
        if not self.dist.main:
            return
        payload = {
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": self._rng_state(),
            "state": self.state.__dict__,
            "config": self.cfg.to_json(),
            "record": self.last_record,  # this epoch's metrics line: a resume writes it back if the file lost it
        }
        if self.alignment is not None:  # the projections: training-only, never part of the student
            payload["alignment"] = self.alignment.state_dict()
        payload |= {"model_ema": self.ema.state_dict()} if self.ema is not None else {}
        save_checkpoint(self.out, payload)

    def load_checkpoint(self) -> bool:
        """Restore the run from its checkpoint; False when it has none."""
        payload = read_checkpoint(self.cfg.out)
        if payload is None:
            return False
        try:
            self._restore(payload)
        except CdeitError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:  # another model, or not a cdeit checkpoint
            raise not_this_run(self.cfg.out, exc) from None
        return True

    def _restore(self, payload: dict[str, Any]) -> None:
        """Model, projections, optimizer, scheduler, RNG states and counters from a checkpoint payload."""
        self.raw_model.load_state_dict(payload["model"])
        if self.alignment is not None:
            if "alignment" not in payload:
                raise CdeitError(
                    f"checkpoint {Path(self.cfg.out) / CHECKPOINT} holds no alignment projections; resume with the "
                    "run's --align."
                )
            self.alignment.load_state_dict(payload["alignment"])
        if self.ema is not None:
            self.ema.load_state_dict(payload["model_ema"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        rng = payload["rng"]
        torch.set_rng_state(rng["torch"])
        self.augment.set_rng_state(rng)
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.state = State(**payload["state"])
        self.last_record = payload.get("record")
        if payload["config"]["epochs"] != self.cfg.epochs:  # --resume RUN --epochs N: the schedule for the new total
            self.scheduler = self.engine.scheduler = lr_schedule(self.optimizer, self.cfg, self.steps_per_epoch)
            self.env["extended"] = rundir.extend_schedule(
                self.scheduler, self.state, payload["config"]["epochs"], self.cfg
            )

    # ---------------------------------------------------------------- loop
    def validate(self, split: str = "val", model: torch.nn.Module | None = None) -> dict[str, float]:
        """engine.validate over `split`, each rank reading its share of the samples (exact under torchrun)."""
        count = self.manifest["splits"][split]["count"]
        indices = list(range(self.dist.rank, count, self.dist.world))  # every sample once over the ranks
        loader = make_loader(beton_path(self.cfg.data, split), self.cfg.eval_batch_size, "sequential",
                             str(self.device), fields=("image", "label", "index"), workers=self.cfg.workers,
                             indices=indices)  # fmt: skip
        teacher = self._val_teacher(split)
        model = self.raw_model if model is None else model
        return validate(model, loader, self.normalise, split, self.dist, self.device, teacher, self.autocast)

    def train_epoch(self, epoch: int, advance: Any) -> dict[str, float]:
        """engine.train_one_epoch, with a non-finite loss stopped in one sentence before any checkpoint."""
        try:
            return train_one_epoch(self.engine, self.train_loader, epoch, self.state, self.dist, advance)
        except NonFiniteLoss as bad:
            raise CdeitError(
                f"the training loss became NaN or infinite at epoch {epoch + 1}, step "
                f"{bad.step - epoch * self.steps_per_epoch} of {self.steps_per_epoch} (optimizer step {bad.step}); "
                f"the run stopped and {self.out / CHECKPOINT} still holds epoch {self.state.epoch}. Start a new run "
                f"with a lower --lr-per-512 (now {self.cfg.lr_per_512:g}), with --clip-grad 1.0, or with "
                "--precision fp32."
            ) from None

    def _val_teacher(self, split: str) -> torch.Tensor | None:
        """The cached teacher logits of `split` (N, C) by sample index, divided by the run's teacher temperature (the
        teacher the run learns from: calibrated with `--teacher-temperature auto`), loaded once; None without one."""
        if not (self.teacher_from_cache and self.cfg.teacher_cache and self.cfg.distill != "none"):
            return None
        if split not in self.val_teacher:
            from cdeit.common.cache import load_teacher_logits

            logits = load_teacher_logits(self.cfg.teacher_cache, self.cfg.data, split, self.device)
            self.val_teacher[split] = logits / self.augment.temperature
        return self.val_teacher[split]

    def _log(self, record: dict[str, Any]) -> None:
        """One epoch's line in metrics.jsonl, its steps and scalars in RUN/tb/ and wandb (rank 0)."""
        if self.dist.main:
            rundir.append_metrics(self.out, record)
            self.tracker.log_epoch(record)

    def _start(self) -> None:
        """Load the checkpoint (resume) or start afresh; write config.json, environment.json, open RUN/tb/."""
        cfg = self.cfg
        resumed = self.resume and self.load_checkpoint()
        if resumed:
            console.print(f"resuming {cfg.out} after epoch {self.state.epoch} (step {self.state.step})")
        if not self.dist.main:
            return
        if resumed:
            note = rundir.repair_metrics(self.out, self.state.epoch, self.last_record)
            if note:
                console.print(f"[yellow]{note}[/]")
        else:
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
        write_json(self.out / "config.json", cfg.to_json())  # a moved run records where it is now
        rundir.record_environment(self.out, self.env, resumed)
        self.tracker = Tracker(self.out, cfg.to_json(), self.state.step if resumed else None, cfg.log_wandb)
        self.engine.on_step = self.tracker.step

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self._start()
        if self.dist.main:
            n_params = sum(p.numel() for p in self.raw_model.parameters())
            console.print(
                f"training {cfg.model or cfg.student} (distill {cfg.distill}, {n_params / 1e6:.2f}M parameters) "
                f"on {self.device}"
                f"{f' x {self.dist.world} processes' if self.dist.enabled else ''}: {cfg.epochs} epochs x "
                f"{self.steps_per_epoch} steps, batch {cfg.batch_size}, lr {cfg.peak_lr:.2e}, {cfg.precision}"
            )
            small_data_note(self.manifest["splits"]["train"]["count"], cfg.batch_size)
            if cfg.min_lr > cfg.peak_lr:  # a small batch with Table 1's floor: the "decay" rises to min_lr
                console.print(
                    f"[yellow]warning: --min-lr {cfg.min_lr:g} is above the lr {cfg.peak_lr:g} (batch "
                    f"{cfg.batch_size}): the cosine rises to it; lower --min-lr for a decay.[/]"
                )
            if cfg.warmup_epochs >= cfg.epochs:  # what was asked, as timm would run it, but rarely what is meant
                console.print(
                    f"[yellow]warning: --warmup-epochs {cfg.warmup_epochs:g} is not shorter than --epochs "
                    f"{cfg.epochs}: the whole run is warmup and the lr never reaches the cosine; lower it for "
                    "Table 1's curve.[/]"
                )
            if self.beyond_paper_teacher:
                aligned = ", ".join(f"{k} x{w:g}" for k, w in cfg.align.items()) or "none"
                console.print(f"teacher: {self.teacher.describe()}; alignment: {aligned} ({cfg.align_metric})")
        remaining = (cfg.epochs - self.state.epoch) * self.steps_per_epoch
        with progress_bar("training", remaining, unit="steps") as advance:
            for epoch in range(self.state.epoch, cfg.epochs):
                record: dict[str, Any] = {"epoch": epoch + 1, "step": self.state.step}
                record |= self.train_epoch(epoch, advance if self.dist.main else None)
                record["step"] = self.state.step
                last = epoch + 1 == cfg.epochs
                if (epoch + 1) % cfg.eval_every == 0 or last:
                    record |= self.validate("val")
                    if self.ema is not None:
                        record |= ema_metrics(self.validate("val", self.ema.module))
                    if record["val_acc"] > self.state.best_val_acc:
                        self.state.best_val_acc, self.state.best_epoch = record["val_acc"], epoch + 1
                        self._save_model("best.safetensors")
                self.state.epoch = epoch + 1
                self.last_record = record
                self._log(record)  # the line before the checkpoint: a kill in between redoes the epoch, loses nothing
                self.save_checkpoint()
                if self.dist.main:
                    console.print(_epoch_line(record))
                distributed.barrier(self.dist)
        return self._finish()

    def _save_model(self, name: str, model: torch.nn.Module | None = None) -> None:
        if not self.dist.main:
            return
        try:
            classes = self.manifest["classes"] if len(self.manifest["classes"]) == self.raw_model.num_classes else None
            save_safetensors(self.raw_model if model is None else model, self.out / name, classes)  # names its classes
        except OSError as exc:
            raise io_error(self.out / name, exc) from None

    def _finish(self) -> dict[str, Any]:
        summary: dict[str, Any] = {}
        if self.dist.main:
            self._save_model("model.safetensors")
            write_json(self.out / "model_config.json", self.raw_model.model_config())
            if self.ema is not None:
                self._save_model(EMA_FILE, self.ema.module)
            records = rundir.read_metrics(self.out)
            last = records[-1] if records else {}
            summary = {
                "student": self.cfg.student,
                **({"model": self.cfg.model} if self.cfg.model else {}),
                "distill": self.cfg.distill,
                "head_strategy": self.cfg.resolved_head_strategy(),
                "parameters": sum(p.numel() for p in self.raw_model.parameters()),
                "epochs": self.state.epoch,
                "steps": self.state.step,
                "train_seconds": self.state.train_seconds,
                "train_images": self.state.train_images,  # images the student saw: what an online teacher would run
                "train_images_per_s": self.state.train_images / max(self.state.train_seconds, 1e-9),
                "best_val_acc": self.state.best_val_acc,
                "best": {"file": "best.safetensors", "chosen_by": "val_acc", "epoch": self.state.best_epoch},
                **{k: v for k, v in last.items() if k.startswith(("val_", "ema_val_"))},
                "lr": self.cfg.peak_lr,
                "device": str(self.device),
                "world_size": self.dist.world,
            }
            if self.cfg.distill != "none":
                summary["teacher_temperature"] = self.augment.temperature
            if self.beyond_paper_teacher:  # beyond the paper's recipe: say which view and alignment
                summary |= {"teacher_view": self.teacher.view, "align": self.cfg.align}
            write_json(self.out / "summary.json", summary)
            self.tracker.close()
        distributed.barrier(self.dist)
        distributed.teardown(self.dist)
        return summary


def _epoch_line(r: dict[str, Any]) -> str:
    val = f"  val acc {r['val_acc']:.2%} loss {r['val_loss']:.3f} ece {r['val_ece']:.4f}" if "val_acc" in r else ""
    return f"epoch {r['epoch']:>3d}  train loss {r['train_total']:.4f}  {r['train_images_per_s']:,.0f} img/s{val}"


def train(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train (or resume) the run described by `cfg`; returns the summary."""
    return Trainer(cfg, resume).run()
