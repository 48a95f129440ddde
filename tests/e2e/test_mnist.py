"""MNIST through the service: the worker reads the real IDX files from the dataset root and trains a
784-512-10 MLP for one epoch to real accuracy. One short job: distillation itself is shown end to end on
the digits data (test_jobs.py), and benchmarks/mnist_service.py runs Hinton et al.'s full recipe."""
from __future__ import annotations

import pytest

from tests.harness import MNIST_DIR

pytestmark = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST files at {MNIST_DIR}")


def test_mnist_job_through_the_service(service) -> None:
    job = service.wait(service.submit({"dataset": {"name": "mnist"}, "distillation": {"method": "none"},
                                       "student": {"architecture": "mlp", "kwargs": {"hidden": [512]}},
                                       "training": {"epochs": 1, "batch_size": 128, "lr": 0.05, "seed": 0},
                                       "resources": {"device": "cpu"}}), 600)
    assert job["status"] == "succeeded", job["error"]
    rep = job["report"]
    assert rep["dataset"] == "mnist" and len(rep["epochs"]) == 1
    assert rep["student"]["params"] == 784 * 512 + 512 + 512 * 10 + 10  # 28x28 grey images, 10 classes
    assert rep["student"]["top1"] > 0.96 and rep["student"]["top5"] > 0.99
