"""Distillation losses, written out so that each can be checked against a hand computation."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), averaged over the batch.

    The T^2 factor keeps the soft term's gradient magnitude independent of T (Hinton et al. 2015),
    so alpha means the same thing at every temperature.
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> dict[str, torch.Tensor]:
    """L = alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(z_s, y), returned as its two weighted terms."""
    return {
        "soft": alpha * soft_kl(student_logits, teacher_logits, temperature),
        "hard": (1.0 - alpha) * F.cross_entropy(student_logits.float(), labels),
    }
