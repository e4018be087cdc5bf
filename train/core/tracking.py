"""What a run logs besides metrics.jsonl: TensorBoard (RUN/tb: each optimizer step's loss parts and lr, each
epoch's metrics, the run's hparams once) and, with `--log-wandb` (timm's name), Weights & Biases.

Steps are buffered on the device and written once per epoch (`flush`), so logging adds no sync to the step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cdeit.common.errors import CdeitError

HPARAM_METRICS = ("val/acc", "val/loss", "val/ece")  # the epoch tags the hparams view lists beside the settings


def check_wandb() -> None:
    """--log-wandb needs the `wandb` package, which is no dependency of cdeit: one sentence when it is missing."""
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise CdeitError("--log-wandb needs the wandb package, which is not installed; `pip install wandb` or drop it.")


def tb_tag(key: str) -> str:
    """metrics.jsonl key -> TensorBoard tag: train_cls_ce -> train/cls_ce, val_acc -> val/acc, lr -> lr."""
    for prefix in ("train", "val"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :]}"
    return key


def hparams(config: dict[str, Any]) -> dict[str, Any]:
    """A config as TensorBoard hparams: numbers, strings and bools as they are, anything else as JSON text."""
    return {k: v if isinstance(v, int | float | str | bool) else json.dumps(v) for k, v in config.items()}


class Tracker:
    """The run's TensorBoard writer and optional wandb run (rank 0 only); `step` is the engine's per-step hook."""

    def __init__(self, out: Path, config: dict[str, Any], resumed_at: int | None, log_wandb: bool = False) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a redone epoch's events replace those a killed run wrote after its checkpoint
        self.tb = SummaryWriter(str(out / "tb"), purge_step=resumed_at)
        self.steps: list[tuple[int, float, dict[str, torch.Tensor]]] = []
        if resumed_at is None:  # the settings once, at the start of the run
            self._write_hparams(config)
        self.wandb: Any = None
        if log_wandb:
            check_wandb()
            import wandb

            self.wandb = wandb.init(project="cdeit", name=out.name, dir=str(out), config=config, resume="allow")

    def _write_hparams(self, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        exp, ssi, sei = hparams_summary(hparams(config), dict.fromkeys(HPARAM_METRICS, 0.0))
        writer = self.tb._get_file_writer()
        for summary in (exp, ssi, sei):
            writer.add_summary(summary)

    def step(self, step: int, lr: float, parts: dict[str, torch.Tensor]) -> None:
        """Keep one optimizer step's loss parts (on the device) and lr until the next flush."""
        self.steps.append((step, lr, parts))

    def flush(self) -> None:
        """Write the buffered steps as `step/<part>` and `step/lr` (one device sync for all of them)."""
        if not self.steps:
            return
        names = sorted(self.steps[0][2])
        values = torch.stack([torch.stack([p[k].float() for k in names]) for _, _, p in self.steps]).tolist()
        for (step, lr, _), row in zip(self.steps, values, strict=True):
            scalars = {f"step/{k}": v for k, v in zip(names, row, strict=True)} | {"step/lr": lr}
            for tag, value in scalars.items():
                self.tb.add_scalar(tag, value, global_step=step)
            if self.wandb is not None:
                self.wandb.log(scalars, step=step)
        self.steps.clear()

    def log_epoch(self, record: dict[str, Any]) -> None:
        """One epoch's numbers (after its steps) under their TensorBoard tags, and in wandb."""
        self.flush()
        scalars = {tb_tag(k): v for k, v in record.items() if k not in ("epoch", "step") and isinstance(v, int | float)}
        for tag, value in scalars.items():
            self.tb.add_scalar(tag, value, global_step=record["step"])
        if self.wandb is not None:
            self.wandb.log(scalars | {"epoch": record["epoch"]}, step=record["step"])
        self.tb.flush()

    def close(self) -> None:
        self.flush()
        self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
