"""`dkd`: TCKD and NCKD against a hand computation, their decomposition of classic KD, the method's terms,
and a short real run on the digits data."""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.losses import hard_loss, teacher_log_probs
from kdcore.methods import METHODS, TeacherOutput
from kdcore.methods.dkd import dkd_terms
from kdcore.spec import JobSpec
from kdcore.train import Teacher, run

ZS = [[2.0, 0.5, -1.0, 0.3], [0.1, 0.2, 0.3, -0.4]]
ZT = [[3.0, -1.0, 0.0, 0.5], [-0.5, 1.5, 0.2, 0.1]]
Y = [0, 2]


def _softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


def test_dkd_terms_match_hand_computation() -> None:
    t = 2.0
    tckd, nckd = dkd_terms(torch.tensor(ZS), teacher_log_probs(torch.tensor(ZT), t), torch.tensor(Y), t)
    want_t = want_n = 0.0
    for zs, zt, y in zip(ZS, ZT, Y, strict=True):
        ps, pt = _softmax(zs, t), _softmax(zt, t)
        want_t += _kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        nps = [p / (1 - ps[y]) for i, p in enumerate(ps) if i != y]
        npt = [p / (1 - pt[y]) for i, p in enumerate(pt) if i != y]
        want_n += _kl(npt, nps)
    assert tckd.item() == pytest.approx(t * t * want_t / 2, rel=1e-5)
    assert nckd.item() == pytest.approx(t * t * want_n / 2, rel=1e-5)


def test_dkd_decomposes_classic_kd() -> None:
    # KD = TCKD + (1 - p_t[target]) * NCKD, per sample (Zhao et al. 2022, eq. 7)
    zs, zt, y, t = torch.randn(1, 6), torch.randn(1, 6), torch.tensor([3]), 3.0
    log_pt = teacher_log_probs(zt, t)
    tckd, nckd = dkd_terms(zs, log_pt, y, t)
    kd = F.kl_div(F.log_softmax(zs / t, 1), log_pt, reduction="batchmean", log_target=True) * t * t
    assert kd.item() == pytest.approx((tckd + (1 - log_pt[0, 3].exp()) * nckd).item(), rel=1e-5)


def test_the_dkd_method_weighs_its_terms_and_ramps_them() -> None:
    d = METHODS.create("dkd", nn.Identity(), [], 2.0, 0.7, {"alpha": 1.5, "beta": 3.0, "warmup_epochs": 2.0})
    zs, y = torch.tensor(ZS), torch.tensor(Y)
    _, terms = d.forward_train(zs, y, 0.5, TeacherOutput(torch.tensor([ZT])))
    tckd, nckd = dkd_terms(zs, teacher_log_probs(torch.tensor(ZT), 2.0), y, 2.0)
    ramp = 0.5 / 2.0
    assert terms["tckd"].item() == pytest.approx(0.7 * ramp * 1.5 * tckd.item(), rel=1e-6)
    assert terms["nckd"].item() == pytest.approx(0.7 * ramp * 3.0 * nckd.item(), rel=1e-6)
    assert torch.equal(terms["hard"], hard_loss(zs, y, 0.7))


def test_dkd_trains_a_student_on_real_data(digits, conv_teacher: nn.Module, distill_spec: Callable[..., JobSpec],
                                           tmp_path: Path) -> None:
    rep = run(distill_spec("dkd", {"warmup_epochs": 1}), digits, [Teacher(conv_teacher, 1, 1)], tmp_path)
    assert rep["student"]["top1"] > 0.7, rep["epochs"]
    assert rep["method"] == "dkd" and len(rep["epochs"]) == 3
