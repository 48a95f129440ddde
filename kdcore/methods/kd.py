"""`kd`: Hinton et al.'s soft targets, and the KD loss itself, which the feature methods add as well.

L = alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y); with several teachers
softmax(z_t/T) is their weighted mean probability. `kd_loss` is the one definition of it: `KD` trains
with it, FitNets and AT add it beside their feature term (`kd_terms`), and its unit test checks it.
"""
from __future__ import annotations

import torch

from kdcore.losses import hard_loss, soft_kl_logp, teacher_log_probs
from kdcore.methods.base import Distiller, TeacherOutput, Terms, register_method


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float, *, weights: torch.Tensor | None = None,
            soft_scale: float = 1.0) -> Terms:
    """alpha * soft_scale * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(z_s, y), as its two weighted terms.

    teacher_logits: [B, C] for one teacher or [K, B, C] for K teachers (mixed by `weights`, see
    kdcore.losses.teacher_log_probs); soft_scale: the warm-up factor of the soft term (1: none).
    """
    log_p_t = teacher_log_probs(teacher_logits, temperature, weights)
    return {"soft": alpha * soft_scale * soft_kl_logp(student_logits, log_p_t, temperature),
            "hard": hard_loss(student_logits, labels, alpha)}


def kd_terms(distiller: Distiller, z_s: torch.Tensor, y: torch.Tensor, epoch: float, t_out: TeacherOutput) -> Terms:
    """`kd_loss` at this fractional epoch: the distiller's T and alpha schedules and warm-up applied."""
    t, a = distiller.coefficients(epoch)
    return kd_loss(z_s, t_out.logits, y, t, a, weights=distiller.teacher_weights,
                   soft_scale=distiller.soft_scale(epoch))


@register_method("kd", description="Soft targets with temperature: alpha * T^2 * KL(p_t || p_s) + "
                 "(1 - alpha) * CE(z_s, y). With several teachers p_t is their weighted mean probability.",
                 paper="Hinton, Vinyals, Dean 2015, Distilling the Knowledge in a Neural Network, arXiv:1503.02531",
                 multi_teacher=True)
class KD(Distiller):
    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: float,
                      t_out: TeacherOutput | None = None) -> tuple[torch.Tensor, Terms]:
        t_out = t_out or self.teacher_forward(x)
        z_s = self.student(x)
        return z_s, kd_terms(self, z_s, y, epoch, t_out)
