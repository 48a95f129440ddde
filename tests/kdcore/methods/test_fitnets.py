"""`fitnets`: the hint is the MSE of the regressed student feature; a short real run, and a resumed run
that continues with its regressor."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.errors import Cancelled
from kdcore.methods import Distiller
from kdcore.spec import JobSpec
from kdcore.train import Teacher, run


def test_fitnets_hint_is_the_mse_of_the_regressed_student_feature(make: Callable[..., Distiller]) -> None:
    d = make("fitnets", {"hint_weight": 3.0, "kd": False})
    assert d.pairs == [("body", "body")]
    x, y = torch.randn(3, 1, 6, 6), torch.tensor([0, 1, 2])
    d.eval()  # fixed batch-norm behaviour, so the hand computation sees the same numbers
    _, terms = d.forward_train(x, y, 1.0)
    with torch.no_grad():
        f_t = d.teachers[0].body(x)
        f_s = d.student.body(x)
        want = F.mse_loss(d.regressors[0](f_s), f_t)
    assert set(terms) == {"ce", "hint"}
    assert terms["hint"].item() == pytest.approx(3.0 * want.item(), rel=1e-5)
    with_kd = make("fitnets")
    assert set(with_kd.forward_train(x, y, 1.0)[1]) == {"soft", "hard", "hint"}


def test_fitnets_trains_a_student_on_real_data(digits, conv_teacher: nn.Module,
                                               distill_spec: Callable[..., JobSpec], tmp_path: Path) -> None:
    rep = run(distill_spec("fitnets"), digits, [Teacher(conv_teacher, 1, 1)], tmp_path)
    assert rep["student"]["top1"] > 0.7, rep["epochs"]
    assert rep["method"] == "fitnets" and len(rep["epochs"]) == 3


def test_a_feature_method_resumes_with_its_regressor(digits, conv_teacher: nn.Module,
                                                     distill_spec: Callable[..., JobSpec], tmp_path: Path) -> None:
    spec = distill_spec("fitnets", epochs=2)
    full = run(spec, digits, [Teacher(conv_teacher, 1, 1)], tmp_path / "full")
    stop_after = {"n": 0}

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "epoch":
            stop_after["n"] += 1

    with pytest.raises(Cancelled):
        run(spec, digits, [Teacher(conv_teacher, 1, 1)], tmp_path / "part", on_event,
            should_stop=lambda: stop_after["n"] >= 1)
    state = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    assert any(k.startswith("regressors.") for k in state["student"])  # the method's own module is checkpointed
    resumed = run(spec, digits, [Teacher(conv_teacher, 1, 1)], tmp_path / "part")
    assert resumed["student"]["top1"] == pytest.approx(full["student"]["top1"], abs=1e-9)
