"""`dkd`: Decoupled KD (Zhao et al. 2022), KD split into its target-class and non-target-class parts."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from kdcore.losses import hard_loss, teacher_log_probs
from kdcore.methods.base import Distiller, TeacherOutput, Terms, register_method


def dkd_terms(student_logits: torch.Tensor, log_p_t: torch.Tensor, labels: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled KD: (TCKD, NCKD), each T^2-scaled and averaged over the batch.

    TCKD is the KL between the binary (target, all others) distributions of teacher and student;
    NCKD the KL between their distributions over the non-target classes alone (renormalized).
    Classic KD equals TCKD + (1 - p_t[target]) * NCKD; DKD weighs the two freely.
    """
    t2 = temperature * temperature
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    gt = F.one_hot(labels, student_logits.shape[1]).bool()
    lt_s, lt_t = log_p_s[gt], log_p_t[gt]  # log p(target), [B]
    # log(1 - p_target) as the log-sum of the other classes' probabilities: exact even when the target
    # takes nearly all the mass (1 - exp(log p) would round to 0 in float32 for a confident teacher)
    lo_s = torch.logsumexp(log_p_s.masked_fill(gt, float("-inf")), dim=1)
    lo_t = torch.logsumexp(log_p_t.masked_fill(gt, float("-inf")), dim=1)
    tckd = (lt_t.exp() * (lt_t - lt_s) + lo_t.exp() * (lo_t - lo_s)).mean() * t2
    # non-target distributions: drop the target class, renormalize by (1 - p_target)
    nt_s = (log_p_s - lo_s[:, None]).masked_fill(gt, 0.0)
    nt_t = (log_p_t - lo_t[:, None]).masked_fill(gt, 0.0)
    p_nt_t = nt_t.exp().masked_fill(gt, 0.0)
    nckd = (p_nt_t * (nt_t - nt_s)).sum(1).mean() * t2
    return tckd, nckd


class DKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(1.0, ge=0, le=100, description="weight of TCKD (target-class KD)")
    # The paper uses 8 on CIFAR-100 and 0.5 on ImageNet, with CE at weight 1. Here the soft side is
    # weighted by distillation.alpha (0.9 by default) against 0.1 for CE; at beta 8 that sent an MNIST
    # student to chance (benchmarks/methods.py), at 2 it trains. See docs/methods.md.
    beta: float = Field(2.0, ge=0, le=100, description="weight of NCKD (non-target-class KD); the paper uses 8 "
                        "on CIFAR-100 with CE at weight 1, i.e. distillation.alpha 0.5")
    warmup_epochs: float = Field(1.0, ge=0, le=1000, description="the DKD term ramps linearly from 0 over "
                                 "this many epochs (the paper uses 20 of 240)")


@register_method("dkd", description="Decoupled KD: (1 - alpha) * CE + alpha * ramp * (params.alpha * TCKD + "
                 "params.beta * NCKD); the target-class and non-target-class parts of KD weighed apart.",
                 paper="Zhao, Cui, Song, Qiu, Liang 2022, Decoupled Knowledge Distillation, CVPR, arXiv:2203.08679",
                 multi_teacher=True, params=DKDParams)
class DKD(Distiller):
    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: float,
                      t_out: TeacherOutput | None = None) -> tuple[torch.Tensor, Terms]:
        t_out = t_out or self.teacher_forward(x)
        z_s = self.student(x)
        t, a = self.coefficients(epoch)
        p = self.params
        ramp = self.soft_scale(epoch) * (min(1.0, epoch / p["warmup_epochs"]) if p["warmup_epochs"] > 0 else 1.0)
        tckd, nckd = dkd_terms(z_s, teacher_log_probs(t_out.logits, t, self.teacher_weights), y, t)
        return z_s, {"tckd": a * ramp * p["alpha"] * tckd, "nckd": a * ramp * p["beta"] * nckd,
                     "hard": hard_loss(z_s, y, a)}
