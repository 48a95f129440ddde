"""The KD loss against a hand computation: T^2 factor, alpha weighting, batchmean KL."""
import math

import torch

from kdcore.losses import kd_loss, soft_kl


def _softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _by_hand(zs: list[list[float]], zt: list[list[float]], y: list[int], t: float, alpha: float) -> tuple[float, float]:
    kl = 0.0
    ce = 0.0
    for s_row, t_row, label in zip(zs, zt, y, strict=True):
        p_s, p_t = _softmax(s_row, t), _softmax(t_row, t)
        kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
        ce += -math.log(_softmax(s_row, 1.0)[label])
    n = len(y)
    return alpha * t * t * kl / n, (1 - alpha) * ce / n


def test_kd_loss_matches_hand_computation() -> None:
    zs = [[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]
    zt = [[3.0, -1.0, 0.0], [-0.5, 1.5, 0.2]]
    y = [0, 2]
    for t, alpha in [(4.0, 0.9), (1.0, 0.5), (2.5, 0.0), (10.0, 1.0)]:
        terms = kd_loss(torch.tensor(zs), torch.tensor(zt), torch.tensor(y), t, alpha)
        soft, hard = _by_hand(zs, zt, y, t, alpha)
        assert math.isclose(terms["soft"].item(), soft, rel_tol=1e-5, abs_tol=1e-7)
        assert math.isclose(terms["hard"].item(), hard, rel_tol=1e-5, abs_tol=1e-7)


def test_t_squared_factor_and_zero_for_identical_logits() -> None:
    zs, zt = torch.randn(8, 10), torch.randn(8, 10)
    base = soft_kl(zs, zt, 1.0).item()
    # with T=1 the term is plain KL; the T^2 factor scales the KL computed at temperature T
    kl_t = torch.nn.functional.kl_div(torch.log_softmax(zs / 3, 1), torch.softmax(zt / 3, 1),
                                      reduction="batchmean").item()
    assert math.isclose(soft_kl(zs, zt, 3.0).item(), 9 * kl_t, rel_tol=1e-5)
    assert base > 0
    assert abs(soft_kl(zt, zt, 4.0).item()) < 1e-6


def test_alpha_one_ignores_labels_and_alpha_zero_ignores_teacher() -> None:
    zs, zt = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5)
    y1, y2 = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 4, 4, 4])
    assert kd_loss(zs, zt, y1, 4.0, 1.0)["hard"].item() == 0.0
    a = sum(kd_loss(zs, zt, y1, 4.0, 1.0).values())
    b = sum(kd_loss(zs, zt, y2, 4.0, 1.0).values())
    assert torch.allclose(a, b)
    c = sum(kd_loss(zs, zt, y1, 4.0, 0.0).values())
    d = sum(kd_loss(zs, torch.randn(4, 5), y1, 4.0, 0.0).values())
    assert torch.allclose(c, d)
