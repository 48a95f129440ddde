"""Fixtures for the method tests: a tiny conv net with named stages, a factory for a set-up distiller around
it, and a conv teacher trained on digits once for the short real runs."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from kdcore.datasets import TensorData
from kdcore.methods import METHODS, Distiller
from kdcore.spec import JobSpec


class Tiny(nn.Module):
    """A conv net with named stages, so that feature methods find `body` by default."""

    def __init__(self, width: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.body(x))))


@pytest.fixture
def tiny() -> type[Tiny]:
    return Tiny


@pytest.fixture
def make() -> Callable[..., Distiller]:
    """make(method, params, teachers): the method around Tiny(4) with Tiny(8) teachers, T=2, alpha=0.7, set up
    on a 6x6 batch; params validated as a JobSpec would."""

    def _make(method: str, params: dict[str, Any] | None = None, teachers: int = 1) -> Distiller:
        spec_params = JobSpec.model_validate({
            "teacher": [{"checkpoint": "art_x"}] * teachers if method != "dml" else None,
            "student": {"architecture": "mlp"}, "dataset": {"name": "digits"},
            "distillation": {"method": method, "params": params or {}}}).distillation.params
        ts = [Tiny(8, 10 + i) for i in range(teachers)] if method != "dml" else []
        extra = {"peer": Tiny(4, 2)} if method == "dml" else {}
        d = METHODS.create(method, Tiny(4, 1), ts, 2.0, 0.7, spec_params, **extra)
        d.setup(torch.randn(4, 1, 6, 6))
        return d

    return _make


@pytest.fixture(scope="session")
def conv_teacher(digits: TensorData, tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    from kdcore.checkpoints import load_student
    from kdcore.train import run

    spec = JobSpec.model_validate({"student": {"architecture": "convnet", "kwargs": {"channels": [16, 32]}},
                                   "dataset": {"name": "digits"}, "distillation": {"method": "none"},
                                   "training": {"epochs": 4, "batch_size": 64, "lr": 0.05}})
    out = tmp_path_factory.mktemp("teacher")
    rep = run(spec, digits, [], out)
    assert rep["student"]["top1"] > 0.8
    return load_student(out / "student.safetensors")[0]


@pytest.fixture
def distill_spec() -> Callable[..., JobSpec]:
    """distill_spec(method, params, schedule, epochs): one conv teacher, an mlp [64] student on digits."""

    def _spec(method: str, params: dict[str, Any] | None = None, schedule: dict[str, Any] | None = None,
              epochs: int = 3) -> JobSpec:
        return JobSpec.model_validate({
            "teacher": {"checkpoint": "art_x"}, "student": {"architecture": "mlp", "kwargs": {"hidden": [64]}},
            "dataset": {"name": "digits"},
            "distillation": {"method": method, "params": params or {}, "schedule": schedule or {}},
            "training": {"epochs": epochs, "batch_size": 64, "lr": 0.05}})

    return _spec
