"""Multi-level alignment with a cached teacher (docs/asymmetric.md): embedding, patch features, attention map.

`Alignment` owns the learned projections from the student's width to the teacher's (one for the class-token
embedding, one shared by the patch tokens). It is built by the trainer next to the loss, so the projections
are not part of the student: they are trained and checkpointed with the run, and absent from the exported
model. It returns its unweighted parts (`align_embedding`, `align_patches`, `align_attention`) and their
weighted sum, which the trainer adds to the distillation loss.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from cdeit.common.errors import CdeitError
from cdeit.train.core.config import ALIGN_METRICS, ALIGN_TARGETS

PROJECTED = ("embedding", "patches")  # compared after a linear projection to the teacher's width


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, metric: str) -> torch.Tensor:
    """Mean distance between projected student features and teacher features (..., D), in float32.

    cosine: 1 - cos(student, teacher) per vector, averaged. mse: squared error against the teacher's features
    standardised per vector (zero mean, unit variance over D, i.e. layer norm without affine), averaged over
    every element; the student's projection is not normalised (it can learn the scale).
    """
    s, t = student.float(), teacher.float()
    if metric == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()
    return F.mse_loss(s, F.layer_norm(t, t.shape[-1:]))


def attention_kl(student_map: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between maps over the patches (B, N), summed over patches, averaged over the batch.

    The teacher's map is renormalised first (it is stored in float16, and mixed maps are mixtures).
    """
    t = teacher_map.float()
    t = t / t.sum(-1, keepdim=True)
    log_s = torch.log(student_map.float().clamp_min(1e-12))
    return F.kl_div(log_s, t, reduction="batchmean", log_target=False)


class Alignment(nn.Module):
    """The alignment terms of `weights` (name -> weight) with their projections; `metric` cosine | mse."""

    def __init__(
        self, weights: Mapping[str, float], metric: str, student_dim: int, teacher_dims: Mapping[str, int]
    ) -> None:
        super().__init__()
        unknown = [k for k in weights if k not in ALIGN_TARGETS]
        if unknown or metric not in ALIGN_METRICS:
            raise CdeitError(
                f"alignment {unknown or metric} is unknown; names are {', '.join(ALIGN_TARGETS)}, "
                f"metrics {', '.join(ALIGN_METRICS)}."
            )
        self.weights = {k: float(weights[k]) for k in ALIGN_TARGETS if k in weights}  # canonical order
        self.metric = metric
        self.proj = nn.ModuleDict({k: nn.Linear(student_dim, teacher_dims[k]) for k in PROJECTED if k in weights})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.weights)

    def forward(self, outputs: Mapping[str, torch.Tensor], teacher: Mapping[str, torch.Tensor]) -> dict:
        """Parts `align_<name>` (unweighted) and `total` (weighted sum) from the student's `feat_<name>` outputs."""
        parts = {}
        for name in self.names:
            student = outputs.get(f"feat_{name}")
            if student is None or name not in teacher:
                raise CdeitError(
                    f"alignment {name} needs the student's feat_{name} and the teacher's {name} targets; call the "
                    f"model with features={self.names} and pass the cached targets to make_targets()."
                )
            if name == "attention":
                parts[f"align_{name}"] = attention_kl(student, teacher[name])
            else:
                parts[f"align_{name}"] = feature_distance(self.proj[name](student.float()), teacher[name], self.metric)
        total = sum(self.weights[name] * parts[f"align_{name}"] for name in self.names)
        return {**parts, "total": total}

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on the projection matrices, none on their biases (as the student's groups)."""
        decay = [p for p in self.parameters() if p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.ndim <= 1]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
