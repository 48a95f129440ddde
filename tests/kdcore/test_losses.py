"""The loss math several methods share, against hand computations: teacher targets as (weighted ensemble)
log-probabilities, the T^2-scaled soft KL, and the (1 - alpha) * CE hard term."""
from __future__ import annotations

import math

import pytest
import torch

from kdcore.losses import cross_entropy, hard_loss, soft_kl_logp, teacher_log_probs

ZS = [[2.0, 0.5, -1.0, 0.3], [0.1, 0.2, 0.3, -0.4]]
ZT = [[3.0, -1.0, 0.0, 0.5], [-0.5, 1.5, 0.2, 0.1]]


def _softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_several_teachers_average_their_probabilities_with_weights() -> None:
    z = torch.tensor([ZT, ZS])  # two "teachers", [2, B, C]
    t, w = 3.0, [0.25, 0.75]
    got = teacher_log_probs(z, t, torch.tensor(w)).exp()
    for b in range(2):
        want = [w[0] * a + w[1] * c for a, c in zip(_softmax(ZT[b], t), _softmax(ZS[b], t), strict=True)]
        assert got[b].tolist() == pytest.approx(want, rel=1e-5)
    # one teacher, as [B, C] or [1, B, C]: its own log-softmax at T; no weights: the plain mean
    one = teacher_log_probs(torch.tensor(ZT), t)
    assert torch.equal(one, teacher_log_probs(torch.tensor([ZT]), t))
    assert one.exp()[0].tolist() == pytest.approx(_softmax(ZT[0], t), rel=1e-6)
    assert torch.allclose(teacher_log_probs(z, t), teacher_log_probs(z, t, torch.tensor([0.5, 0.5])))


def test_soft_kl_has_the_t_squared_factor_and_is_zero_for_identical_logits() -> None:
    zs, zt = torch.randn(8, 10), torch.randn(8, 10)
    kl_t = torch.nn.functional.kl_div(torch.log_softmax(zs / 3, 1), torch.softmax(zt / 3, 1),
                                      reduction="batchmean").item()
    assert math.isclose(soft_kl_logp(zs, teacher_log_probs(zt, 3.0), 3.0).item(), 9 * kl_t, rel_tol=1e-5)
    assert soft_kl_logp(zs, teacher_log_probs(zt, 1.0), 1.0).item() > 0
    assert abs(soft_kl_logp(zt, teacher_log_probs(zt, 4.0), 4.0).item()) < 1e-6


def test_hard_loss_is_one_minus_alpha_times_cross_entropy() -> None:
    z, y = torch.tensor(ZS), torch.tensor([0, 2])
    ce = sum(-math.log(_softmax(row, 1.0)[label]) for row, label in zip(ZS, [0, 2], strict=True)) / 2
    assert cross_entropy(z, y).item() == pytest.approx(ce, rel=1e-6)
    assert hard_loss(z, y, 0.9).item() == pytest.approx(0.1 * ce, rel=1e-5)
    assert hard_loss(z, y, 1.0).item() == 0.0
    assert cross_entropy(z.bfloat16(), y).dtype == torch.float32  # float32 whatever the autocast dtype
