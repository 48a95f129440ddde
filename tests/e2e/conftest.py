"""Teachers the e2e tests distill from, trained by the service itself (the `service` stack comes from
tests/conftest.py): each is trained once per session, when a test first needs it."""
from __future__ import annotations

from typing import Any

import pytest

from tests.harness import Stack
from tests.helpers import spec

CONV_TEACHER = {"architecture": "convnet", "kwargs": {"channels": [16, 32], "hidden": 64}}


@pytest.fixture(scope="session")
def teacher_job(service: Stack) -> dict[str, Any]:
    """An mlp 256-256 trained on the digits labels (method none)."""
    job = service.wait(service.submit(spec(name="digits-teacher")))
    assert job["status"] == "succeeded", job["error"]
    return job


@pytest.fixture(scope="session")
def conv_teacher(service: Stack) -> dict[str, Any]:
    """A small convnet trained on the digits labels: a teacher with feature layers."""
    job = service.wait(service.submit(spec(name="conv-teacher", student=CONV_TEACHER,
                                           training={"epochs": 5, "batch_size": 64, "lr": 0.05, "seed": 0})))
    assert job["status"] == "succeeded", job["error"]
    assert job["report"]["student"]["top1"] > 0.85
    return job
