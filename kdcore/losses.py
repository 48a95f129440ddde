"""Distillation losses, written out so that each can be checked against a hand computation.

Teacher targets enter as log-probabilities at temperature T (`teacher_log_probs`), so that one teacher
and a weighted ensemble of teachers (whose probabilities are averaged, Hinton et al. 2015) are the
same case for every logit-based loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def teacher_log_probs(teacher_logits: torch.Tensor, temperature: float,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """log of the (weighted) mean of softmax(z_k / T) over teachers k.

    teacher_logits: [B, C] for one teacher or [K, B, C] for K teachers; weights: [K], summing to 1.
    """
    if teacher_logits.ndim == 2:
        return F.log_softmax(teacher_logits.float() / temperature, dim=1)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=2)
    if teacher_logits.shape[0] == 1:
        return log_p[0]
    k = teacher_logits.shape[0]
    w = torch.full((k,), 1.0 / k, device=log_p.device) if weights is None else weights.to(log_p.device).float()
    return torch.logsumexp(log_p + w.log().view(k, 1, 1), dim=0)


def soft_kl_logp(student_logits: torch.Tensor, log_p_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(p_t || softmax(z_s/T)), averaged over the batch, with the teacher given as log-probs."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (temperature * temperature)


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), averaged over the batch.

    The T^2 factor keeps the soft term's gradient magnitude independent of T (Hinton et al. 2015),
    so alpha means the same thing at every temperature.
    """
    return soft_kl_logp(student_logits, teacher_log_probs(teacher_logits, temperature), temperature)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, alpha: float) -> dict[str, torch.Tensor]:
    """L = alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(z_s, y), returned as its two weighted terms."""
    return {
        "soft": alpha * soft_kl(student_logits, teacher_logits, temperature),
        "hard": (1.0 - alpha) * F.cross_entropy(student_logits.float(), labels),
    }


def dkd_terms(student_logits: torch.Tensor, log_p_t: torch.Tensor, labels: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled KD (Zhao et al. 2022): (TCKD, NCKD), each T^2-scaled and averaged over the batch.

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
