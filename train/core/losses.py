"""Training objectives (paper Eq. 4-7): one small module per student and distillation type.

Every loss takes the dict of head logits a student returns in training mode and the batch's `Targets`
(possibly mixed), and returns its named parts plus 'total'. Parts are unweighted per-head losses
('cls_ce', 'dist_ce' or 'dist_kl', 'corr_ce'); 'total' weights them as the paper's equation does.
Cross-entropies are taken against target distributions, so smoothing and Mixup need no special case.
See docs/students.md for each equation and the choices the paper leaves open.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cdeit.common.errors import CdeitError
from cdeit.train.core.kinds import DistillKind, HeadStrategy, StudentKind, check_distill, resolve_head_strategy
from cdeit.train.core.mixing import Targets

Outputs = dict[str, torch.Tensor]
Parts = dict[str, torch.Tensor]


def soft_target_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against a target distribution, averaged over the batch: mean_i -sum_k t_ik log p_ik."""
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def tempered_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(teacher || softmax(student / tau)) summed over classes and averaged over the batch ("batchmean")."""
    log_q = F.log_softmax(student_logits.float() / tau, dim=-1)
    return F.kl_div(log_q, teacher_probs, reduction="batchmean", log_target=False)


def _get(outputs: Outputs, key: str, loss: nn.Module) -> torch.Tensor:
    if not isinstance(outputs, dict):
        raise CdeitError(
            f"{type(loss).__name__} needs every head's logits but got one tensor (the class logits); "
            "call model.set_return_heads(True) before training."
        )
    if key not in outputs:
        raise CdeitError(
            f"{type(loss).__name__} needs the model output {key!r} but got {sorted(outputs)}; "
            "build the loss with the same student and head_strategy as the model."
        )
    return outputs[key]


def _need(target: torch.Tensor | None, name: str, loss: nn.Module) -> torch.Tensor:
    if target is None:
        raise CdeitError(f"{type(loss).__name__} needs {name} targets; pass them to make_targets().")
    return target


class LabelLoss(nn.Module):
    """`none`: every class-space head learns the (smoothed) labels, the corruption head the image type.

    ViT: CE(cls, y). DeiT: mean of CE(cls, y) and CE(dist, y). CdeiT: mean of the class term (cls, or
    cls + corr_to_cls for strategies 2/3), CE(dist, y) and CE(corr, type).
    """

    def __init__(self, student: StudentKind = "vit", head_strategy: HeadStrategy | None = None) -> None:
        super().__init__()
        self.student, self.head_strategy = student, resolve_head_strategy(student, head_strategy)

    def forward(self, outputs: Outputs, targets: Targets) -> Parts:
        parts = {"cls_ce": soft_target_ce(class_logits(outputs, self.head_strategy, self), targets.label)}
        if self.student != "vit":
            parts["dist_ce"] = soft_target_ce(_get(outputs, "dist", self), targets.label)
        if self.student == "cdeit":
            parts["corr_ce"] = soft_target_ce(
                _get(outputs, "corr", self), _need(targets.corruption, "corruption", self)
            )
        return {**parts, "total": torch.stack(list(parts.values())).mean()}


class SoftDistillLoss(nn.Module):
    """DeiT soft distillation, Eq. 4: (1 - lam) CE(cls, y) + lam tau^2 KL(teacher || dist at tau)."""

    def __init__(self, tau: float = 3.0, lam: float = 0.5) -> None:
        super().__init__()
        self.tau, self.lam = tau, lam

    def forward(self, outputs: Outputs, targets: Targets) -> Parts:
        cls_ce = soft_target_ce(_get(outputs, "cls", self), targets.label)
        dist_kl = tempered_kl(_get(outputs, "dist", self), _teacher(targets, "soft", self.tau, self), self.tau)
        total = (1 - self.lam) * cls_ce + self.lam * self.tau**2 * dist_kl
        return {"cls_ce": cls_ce, "dist_kl": dist_kl, "total": total}


class HardDistillLoss(nn.Module):
    """DeiT hard distillation: (1 - lam) CE(cls, y) + lam CE(dist, argmax teacher); lam = 1/2 is Eq. 5.

    lam weighs the two terms as DeiT's `--distillation-alpha` does (its DistillationLoss, hard branch).
    """

    def __init__(self, lam: float = 0.5) -> None:
        super().__init__()
        self.lam = lam

    def forward(self, outputs: Outputs, targets: Targets) -> Parts:
        cls_ce = soft_target_ce(_get(outputs, "cls", self), targets.label)
        dist_ce = soft_target_ce(_get(outputs, "dist", self), _teacher(targets, "hard", None, self))
        return {"cls_ce": cls_ce, "dist_ce": dist_ce, "total": (1 - self.lam) * cls_ce + self.lam * dist_ce}


class CdeitHardLoss(nn.Module):
    """CdeiT hard distillation, Eq. 6: the mean of CE(class term, y), CE(dist, argmax teacher), CE(corr, type).

    The class term is cls + corr_to_cls for strategies 2/3 (Eq. 6); for strategy 1 it is cls alone, which
    makes the loss the average of the three tokens' own losses (paper 3.3).
    """

    def __init__(self, head_strategy: HeadStrategy = "linear") -> None:
        super().__init__()
        self.head_strategy = resolve_head_strategy("cdeit", head_strategy)

    def forward(self, outputs: Outputs, targets: Targets) -> Parts:
        cls_ce = soft_target_ce(class_logits(outputs, self.head_strategy, self), targets.label)
        dist_ce = soft_target_ce(_get(outputs, "dist", self), _teacher(targets, "hard", None, self))
        corr_ce = soft_target_ce(_get(outputs, "corr", self), _need(targets.corruption, "corruption", self))
        return {"cls_ce": cls_ce, "dist_ce": dist_ce, "corr_ce": corr_ce, "total": (cls_ce + dist_ce + corr_ce) / 3}


class CdeitSoftLoss(nn.Module):
    """CdeiT soft distillation.

    Strategies 2/3, Eq. 7: (1 - lam) (CE(cls + corr_to_cls, y) + CE(corr, type)) / 2 + lam tau^2 KL(dist).
    Strategy 1: the average of the three tokens' own losses, (CE(cls, y) + tau^2 KL(dist) + CE(corr, type)) / 3;
    lam does not enter (paper 3.3: "the average of the individual losses of the three tokens").
    """

    def __init__(self, head_strategy: HeadStrategy = "linear", tau: float = 3.0, lam: float = 0.5) -> None:
        super().__init__()
        self.head_strategy = resolve_head_strategy("cdeit", head_strategy)
        self.tau, self.lam = tau, lam

    def forward(self, outputs: Outputs, targets: Targets) -> Parts:
        cls_ce = soft_target_ce(class_logits(outputs, self.head_strategy, self), targets.label)
        dist_kl = tempered_kl(_get(outputs, "dist", self), _teacher(targets, "soft", self.tau, self), self.tau)
        corr_ce = soft_target_ce(_get(outputs, "corr", self), _need(targets.corruption, "corruption", self))
        if self.head_strategy == "none":
            total = (cls_ce + self.tau**2 * dist_kl + corr_ce) / 3
        else:
            total = (1 - self.lam) * (cls_ce + corr_ce) / 2 + self.lam * self.tau**2 * dist_kl
        return {"cls_ce": cls_ce, "dist_kl": dist_kl, "corr_ce": corr_ce, "total": total}


def class_logits(outputs: Outputs, head_strategy: HeadStrategy | None, loss: nn.Module) -> torch.Tensor:
    """The logits of the class term: Z_s, or Z_s + FFN(Z_c) for CdeiT strategies 2/3 (Eq. 6, 7)."""
    z_s = _get(outputs, "cls", loss)
    return z_s + _get(outputs, "corr_to_cls", loss) if head_strategy in ("linear", "mlp") else z_s


def _teacher(targets: Targets, distill: DistillKind, tau: float | None, loss: nn.Module) -> torch.Tensor:
    """The teacher targets, checked to be of the kind (and temperature) this loss was built for."""
    teacher = _need(targets.teacher, "teacher", loss)
    if targets.distill != distill or (tau is not None and targets.tau != tau):
        raise CdeitError(
            f"{type(loss).__name__} expects {distill} teacher targets (tau {tau}) but got {targets.distill} "
            f"(tau {targets.tau}); call make_targets() with the same distill and tau as build_loss()."
        )
    return teacher


def build_loss(
    student: StudentKind,
    distill: DistillKind = "none",
    head_strategy: HeadStrategy | None = None,
    tau: float = 3.0,
    lam: float = 0.5,
) -> nn.Module:
    """The training loss for a student ('vit' | 'deit' | 'cdeit') and distillation type ('none' | 'soft' | 'hard')."""
    head_strategy = resolve_head_strategy(student, head_strategy)  # also checks `student`
    if check_distill(distill, student) == "none":
        return LabelLoss(student, head_strategy)
    if (distill == "soft" and tau <= 0) or not 0 <= lam <= 1:
        raise CdeitError(f"distillation needs tau > 0 and 0 <= lam <= 1, got tau {tau} and lam {lam}.")
    if student == "deit":
        return SoftDistillLoss(tau, lam) if distill == "soft" else HardDistillLoss(lam)
    return CdeitSoftLoss(head_strategy, tau, lam) if distill == "soft" else CdeitHardLoss(head_strategy)
