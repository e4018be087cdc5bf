"""The teacher's 10-way linear head (paper 4.1): fitted on cached backbone features, saved, loaded, applied.

The backbone is frozen, so its features are computed once and the head is fitted on them: AdamW, lr 5e-5,
weight decay 0.05, no augmentation, many cheap epochs over the features, the epoch with the best validation
accuracy kept. Zero initialisation and a seeded shuffle make the fit deterministic on one device.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cdeit.common.errors import CdeitError

if TYPE_CHECKING:
    import torch

    from cdeit.common.teacher import Teacher


@dataclass(frozen=True)
class HeadFit:
    """Settings of the head fit (paper 4.1); with the teacher and data they decide the head."""

    epochs: int = 50
    lr: float = 5e-5
    weight_decay: float = 0.05
    batch_size: int = 1024
    seed: int = 0
    standardize: bool = False  # fit on z-scored features (train statistics), folded back into the head


@dataclass
class LinearHead:
    """logits = features @ weight.T + bias, with weight (classes, features) and bias (classes,), float32 on CPU."""

    weight: torch.Tensor
    bias: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)  # source, teacher, weights_hash, classes, fit, result

    @property
    def hash(self) -> str:
        from cdeit.common.cache import tensor_hash

        return tensor_hash({"weight": self.weight, "bias": self.bias})

    def logits(self, features: np.ndarray) -> np.ndarray:
        """float32 logits of float16/32 features, accumulated in float64 so they do not depend on thread count."""
        w = self.weight.double().numpy()
        b = self.bias.double().numpy()
        return (features.astype(np.float64) @ w.T + b).astype(np.float32)


def fit_head(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    fit: HeadFit,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Fit weight and bias on (features, labels) of train, keep the epoch with the best val accuracy."""
    import torch
    import torch.nn.functional as F

    x, y = train[0].to(device, torch.float32), train[1].to(device)
    vx, vy = val[0].to(device, torch.float32), val[1].to(device)
    mean = torch.zeros(x.shape[1], device=device)
    std = torch.ones(x.shape[1], device=device)
    if fit.standardize:  # a linear probe's usual z-scoring; it matters for features of tiny or uneven scale
        mean, std = x.mean(0), x.std(0).clamp_min(1e-12)
        x, vx = (x - mean) / std, (vx - mean) / std
    layer = torch.nn.Linear(x.shape[1], num_classes, device=device)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.AdamW(layer.parameters(), lr=fit.lr, weight_decay=fit.weight_decay, fused=device.type == "cuda")
    gen = torch.Generator().manual_seed(fit.seed)
    best_acc, best_epoch, best, history = -1.0, 0, None, []
    for epoch in range(1, fit.epochs + 1):
        order = torch.randperm(len(x), generator=gen).to(device)
        for i in range(0, len(x), fit.batch_size):
            idx = order[i : i + fit.batch_size]
            loss = F.cross_entropy(layer(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc = _accuracy(layer, vx, vy)
        history.append(round(acc, 6))
        if acc > best_acc:  # the first epoch reaching the best accuracy wins ties
            best_acc, best_epoch = acc, epoch
            best = (layer.weight.detach().float().cpu().clone(), layer.bias.detach().float().cpu().clone())
    assert best is not None, "fit_head needs at least one epoch"
    weight, bias = best
    if fit.standardize:  # W (x - m) / s + b  ==  (W / s) x + (b - (W / s) m): a head on the raw features
        scale = (1.0 / std).cpu().double()
        weight64 = weight.double() * scale
        bias = (bias.double() - weight64 @ mean.cpu().double()).float()
        weight = weight64.float()
    return weight, bias, {"best_epoch": best_epoch, "val_accuracy": best_acc, "val_accuracy_per_epoch": history}


def _accuracy(layer: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    import torch

    with torch.no_grad():
        return float((layer(x).argmax(1) == y).float().mean()) if len(y) else 0.0


def fit_settings(fit: HeadFit, teacher: Teacher, fingerprints: dict[str, str]) -> dict[str, Any]:
    """Everything that decides a fitted head; a cache reuses its head only when these all agree."""
    return asdict(fit) | {
        "weights_hash": teacher.weights_hash,
        "train": fingerprints["train"],
        "val": fingerprints["val"],
    }


def save_head(path: str | os.PathLike, head: LinearHead) -> None:
    """Write the head as safetensors (tensors `weight`, `bias`; metadata as JSON strings), atomically."""
    from cdeit.common.cache import write_head_file

    write_head_file(path, {"weight": head.weight.contiguous(), "bias": head.bias.contiguous()}, head.meta)


def load_head(path: str | os.PathLike, teacher: Teacher, num_classes: int) -> LinearHead:
    """A head file for this teacher and class count, or one sentence saying why it does not fit."""
    from cdeit.common.cache import read_head_file

    path = Path(path)
    if not path.is_file():
        raise CdeitError(
            f"head file {path} does not exist; pass a head.safetensors written by `cdeit precompute-teacher`."
        )
    tensors, meta = read_head_file(path)
    weight, bias = tensors.get("weight"), tensors.get("bias")
    want = (num_classes, teacher.num_features)
    if weight is None or bias is None or tuple(weight.shape) != want or tuple(bias.shape) != (num_classes,):
        shapes = {k: tuple(v.shape) for k, v in tensors.items()}
        raise CdeitError(
            f"head file {path} holds {shapes}, not weight {want} and bias ({num_classes},) for {teacher.name}."
        )
    if not (bool(weight.isfinite().all()) and bool(bias.isfinite().all())):  # an all-NaN cache would follow
        raise CdeitError(f"head file {path} holds NaN or infinite values; fit the head again or pass another file.")
    if meta.get("weights_hash") not in (None, teacher.weights_hash):
        raise CdeitError(f"head file {path} was fitted on another teacher's features (weights {meta['weights_hash']}).")
    return LinearHead(weight.float(), bias.float(), meta | {"source": meta.get("source", "file")})
