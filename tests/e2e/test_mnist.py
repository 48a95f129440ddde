"""MNIST through the service: a 1200-1200 MLP teacher trained on labels, distilled into an 800-800
MLP. A short recipe (about 30 s on 2 cores); benchmarks/mnist_service.py runs the full one."""
from __future__ import annotations

import pytest

from tests.conftest import MNIST_DIR

pytestmark = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST files at {MNIST_DIR}")


def test_mnist_teacher_and_kd_student(service) -> None:
    recipe = {"epochs": 2, "batch_size": 128, "lr": 0.05, "seed": 0}
    with service.client() as http:
        tid = service.submit(http, {"dataset": {"name": "mnist"}, "distillation": {"method": "none"},
                                    "student": {"architecture": "mlp", "kwargs": {"hidden": [1200, 1200]}},
                                    "training": recipe, "resources": {"device": "cpu"}})
        teacher = service.wait(http, tid, 900)
        assert teacher["status"] == "succeeded", teacher["error"]
        sid = service.submit(http, {"dataset": {"name": "mnist"}, "teacher": {"job": tid},
                                    "distillation": {"method": "kd", "temperature": 4.0, "alpha": 0.9},
                                    "student": {"architecture": "mlp", "kwargs": {"hidden": [800, 800]}},
                                    "training": recipe, "resources": {"device": "cpu"}})
        student = service.wait(http, sid, 900)
        assert student["status"] == "succeeded", student["error"]
    rep = student["report"]
    assert rep["teacher"]["top1"] > 0.96 and rep["student"]["top1"] > 0.96
    assert rep["teacher"]["top5"] > 0.99 and rep["agreement"] > 0.96
    assert rep["compression"] == pytest.approx(2395210 / 1276810, rel=1e-3)
