"""The loss math several methods share: teacher targets as log-probabilities, the soft KL, the hard term.

Teacher targets enter as log-probabilities at temperature T (`teacher_log_probs`), so that one teacher
and a weighted ensemble of teachers (whose probabilities are averaged, Hinton et al. 2015) are the
same case for every logit-based loss. A method's own loss (KD's, DKD's TCKD/NCKD, the FitNets hint,
the attention map) lives beside the method in kdcore/methods/.
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
    """T^2 * KL(p_t || softmax(z_s/T)), averaged over the batch, with the teacher given as log-probs.

    The T^2 factor makes the gradient independent of T in the high-T limit, where it tends to
    (z_s - z_t) / N, a regression on logit differences (Hinton et al. 2015). It does not put the soft
    term on the hard term's scale: at temperature T the gradient on the logits is T * (p_s - p_t) / N,
    bounded by T where cross-entropy's is bounded by 1 (docs/methods.md).
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (temperature * temperature)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE on the labels, in float32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float(), labels)


def hard_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """(1 - alpha) * CE(z, y): the label term of every method that weighs a soft term by alpha."""
    return (1.0 - alpha) * cross_entropy(logits, labels)
