"""`kd`: the KD loss against a hand computation, and the method that trains with exactly that loss;
short real runs on the digits data (a temperature schedule; two weighted teachers)."""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from kdcore.methods import METHODS, TeacherOutput
from kdcore.methods.kd import kd_loss
from kdcore.models import create_model
from kdcore.schedules import ScheduleSpec
from kdcore.spec import JobSpec
from kdcore.train import Teacher, run

ZS = [[2.0, 0.5, -1.0, 0.3], [0.1, 0.2, 0.3, -0.4]]
ZT = [[3.0, -1.0, 0.0, 0.5], [-0.5, 1.5, 0.2, 0.1]]
Y = [0, 2]


def _softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _by_hand(zs: list[list[float]], zt: list[list[float]], y: list[int], t: float, alpha: float) -> tuple[float, float]:
    """L = alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(z_s, y), batch means."""
    kl = ce = 0.0
    for s_row, t_row, label in zip(zs, zt, y, strict=True):
        p_s, p_t = _softmax(s_row, t), _softmax(t_row, t)
        kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
        ce += -math.log(_softmax(s_row, 1.0)[label])
    n = len(y)
    return alpha * t * t * kl / n, (1 - alpha) * ce / n


def test_kd_loss_matches_hand_computation() -> None:
    for t, alpha in [(4.0, 0.9), (1.0, 0.5), (2.5, 0.0), (10.0, 1.0), (2.0, 0.7)]:
        terms = kd_loss(torch.tensor(ZS), torch.tensor(ZT), torch.tensor(Y), t, alpha)
        soft, hard = _by_hand(ZS, ZT, Y, t, alpha)
        assert set(terms) == {"soft", "hard"}
        assert math.isclose(terms["soft"].item(), soft, rel_tol=1e-5, abs_tol=1e-7)
        assert math.isclose(terms["hard"].item(), hard, rel_tol=1e-5, abs_tol=1e-7)


def test_the_kd_method_trains_with_exactly_kd_loss() -> None:
    d = METHODS.create("kd", nn.Identity(), [], 2.0, 0.7, {})
    zs, y = torch.tensor(ZS, requires_grad=True), torch.tensor(Y)
    t_out = TeacherOutput(torch.tensor([ZT]))  # a cached output of one teacher: [K=1, B, C]
    _, terms = d.forward_train(zs, y, 0.0, t_out)
    want = kd_loss(zs, torch.tensor(ZT), y, 2.0, 0.7)
    assert set(terms) == set(want) and all(torch.equal(terms[k], want[k]) for k in want)
    soft, hard = _by_hand(ZS, ZT, Y, 2.0, 0.7)
    assert terms["soft"].item() == pytest.approx(soft, rel=1e-5)
    assert terms["hard"].item() == pytest.approx(hard, rel=1e-5)
    # warm-up scales the soft term only: half-way through a 1-epoch warm-up, half the soft term
    warm = METHODS.create("kd", nn.Identity(), [], 2.0, 0.7, {}, schedule=ScheduleSpec(warmup_epochs=1.0))
    _, half = warm.forward_train(zs, y, 0.5, t_out)
    assert half["soft"].item() == pytest.approx(0.5 * soft, rel=1e-5) and torch.equal(half["hard"], terms["hard"])
    assert torch.equal(half["soft"], kd_loss(zs, torch.tensor(ZT), y, 2.0, 0.7, soft_scale=0.5)["soft"])


def test_t_squared_factor_and_zero_for_identical_logits() -> None:
    zs, zt, y = torch.randn(8, 10), torch.randn(8, 10), torch.zeros(8, dtype=torch.long)
    base = kd_loss(zs, zt, y, 1.0, 1.0)["soft"].item()
    # with T=1 the term is plain KL; the T^2 factor scales the KL computed at temperature T
    kl_t = torch.nn.functional.kl_div(torch.log_softmax(zs / 3, 1), torch.softmax(zt / 3, 1),
                                      reduction="batchmean").item()
    assert math.isclose(kd_loss(zs, zt, y, 3.0, 1.0)["soft"].item(), 9 * kl_t, rel_tol=1e-5)
    assert base > 0
    assert abs(kd_loss(zt, zt, y, 4.0, 1.0)["soft"].item()) < 1e-6


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


def test_several_teachers_enter_as_their_weighted_mean_probability() -> None:
    z = torch.tensor([ZT, ZS])  # two "teachers", [2, B, C]
    w = torch.tensor([0.25, 0.75])
    got = kd_loss(torch.tensor(ZS), z, torch.tensor(Y), 3.0, 1.0, weights=w)["soft"].item()
    kl = 0.0
    for b in range(2):
        p_t = [0.25 * a + 0.75 * c for a, c in zip(_softmax(ZT[b], 3.0), _softmax(ZS[b], 3.0), strict=True)]
        kl += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, _softmax(ZS[b], 3.0), strict=True))
    assert got == pytest.approx(9 * kl / 2, rel=1e-4)  # float32 log-sum-exp


def test_kd_with_a_temperature_schedule_trains_a_student_on_real_data(digits, conv_teacher: nn.Module,
                                                                      distill_spec: Callable[..., JobSpec],
                                                                      tmp_path: Path) -> None:
    spec = distill_spec("kd", schedule={"temperature": {"kind": "linear", "start": 8, "end": 2},
                                        "alpha": {"kind": "cosine", "start": 0.5}})
    rep = run(spec, digits, [Teacher(conv_teacher, 1, 1)], tmp_path)
    assert rep["student"]["top1"] > 0.7, rep["epochs"]
    assert rep["method"] == "kd" and len(rep["epochs"]) == 3
    temps = [e["temperature"] for e in rep["epochs"]]
    assert temps == sorted(temps, reverse=True) and 2 < temps[-1] < temps[0] < 8
    assert set(rep["epochs"][0]["losses"]) == {"soft", "hard"}


def test_two_weighted_teachers_in_the_report(digits, conv_teacher: nn.Module, tmp_path: Path) -> None:
    spec = JobSpec.model_validate({
        "teacher": [{"checkpoint": "a", "weight": 3}, {"checkpoint": "b", "weight": 1}],
        "student": {"architecture": "mlp", "kwargs": {"hidden": [64]}}, "dataset": {"name": "digits"},
        "distillation": {"method": "kd"}, "training": {"epochs": 2, "batch_size": 64, "lr": 0.05}})
    other = create_model("mlp", num_classes=10, in_channels=1, input_size=(8, 8), hidden=[32])
    rep = run(spec, digits, [Teacher(conv_teacher, 1, 1), Teacher(other, 1, 1)], tmp_path / "multi")
    assert rep["teacher"]["count"] == 2 and rep["teacher"]["weights"] == [3.0, 1.0]
    assert rep["student"]["top1"] > 0.7
