"""`at`: the attention map and the attention term against hand computations; a short real run with a
warm-up; a layer name the teacher lacks fails the job clearly."""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.errors import JobError
from kdcore.methods import Distiller
from kdcore.methods.at import attention_map
from kdcore.spec import JobSpec
from kdcore.train import Teacher, run


def test_attention_map_by_hand() -> None:
    f = torch.tensor([[[[1.0, 2.0], [0.0, 3.0]], [[1.0, 0.0], [2.0, 1.0]]]])  # [1, 2, 2, 2]
    q = [(1 + 1) / 2, (4 + 0) / 2, (0 + 4) / 2, (9 + 1) / 2]  # channel mean of f^2
    norm = math.sqrt(sum(v * v for v in q))
    assert attention_map(f, 2.0).flatten().tolist() == pytest.approx([v / norm for v in q], rel=1e-6)
    # against flat features: one value per channel, pooled to a common count
    units = attention_map(f, 2.0, 2).flatten().tolist()
    per_channel = [(1 + 4 + 0 + 9) / 4, (1 + 0 + 4 + 1) / 4]
    n2 = math.sqrt(sum(v * v for v in per_channel))
    assert units == pytest.approx([v / n2 for v in per_channel], rel=1e-6)


def test_at_term_by_hand(make: Callable[..., Distiller]) -> None:
    d = make("at", {"beta": 10.0, "kd": False})
    x, y = torch.randn(3, 1, 6, 6), torch.tensor([0, 1, 2])
    d.eval()
    _, terms = d.forward_train(x, y, 1.0)
    with torch.no_grad():
        a_t = d.teachers[0].body(x).pow(2).mean(1).flatten(1)
        a_s = d.student.body(x).pow(2).mean(1).flatten(1)
        want = (F.normalize(a_s, dim=1) - F.normalize(a_t, dim=1)).pow(2).mean()
    assert set(terms) == {"ce", "attention"}
    assert terms["attention"].item() == pytest.approx(10.0 * want.item(), rel=1e-5)


def test_at_with_warmup_trains_a_student_on_real_data(digits, conv_teacher: nn.Module,
                                                      distill_spec: Callable[..., JobSpec], tmp_path: Path) -> None:
    rep = run(distill_spec("at", schedule={"warmup_epochs": 1}), digits, [Teacher(conv_teacher, 1, 1)], tmp_path)
    assert rep["student"]["top1"] > 0.7, rep["epochs"]
    assert rep["method"] == "at" and len(rep["epochs"]) == 3


def test_bad_layer_name_fails_the_job_clearly(digits, conv_teacher: nn.Module, tmp_path: Path) -> None:
    spec = JobSpec.model_validate({
        "teacher": {"checkpoint": "art_x"}, "student": {"architecture": "mlp", "kwargs": {"hidden": [64]}},
        "dataset": {"name": "digits"},
        "distillation": {"method": "at", "params": {"pairs": [{"teacher": "nope", "student": "body"}]}},
        "training": {"epochs": 1}})
    with pytest.raises(JobError, match="no layer 'nope'") as e:
        run(spec, digits, [Teacher(conv_teacher, 1, 1)], tmp_path)
    assert e.value.code == "bad_params"
