"""kdcore.batching: a model with limited batches gets only batches it accepts, on every inference path of a
job: the teacher-output cache (logits and features), the per-step teacher (augmentation on), the teacher's
evaluation and the feature hooks. The teachers are real .pt2 programs whose own guards refuse any other
batch size, exported the way users export them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.export import Dim

from kdcore.batching import run_in_chunks
from kdcore.checkpoints import load_teacher
from kdcore.spec import JobSpec
from kdcore.teacher_cache import BUILT, OFF_AUGMENT
from kdcore.teacher_io import TeacherIO
from kdcore.train import Teacher, run


def test_run_in_chunks_splits_at_the_max_and_pads_below_the_min() -> None:
    seen: list[int] = []

    def double(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return x * 2

    x = torch.arange(10.0).view(10, 1)
    torch.testing.assert_close(run_in_chunks(double, x, (4, 4)), x * 2)  # static batch 4: 4, 4, 2 padded to 4
    assert seen == [4, 4, 4]
    seen.clear()
    torch.testing.assert_close(run_in_chunks(double, x, (3, 6)), x * 2)  # bounded [3, 6]: 6, then 4
    assert seen == [6, 4]
    seen.clear()
    torch.testing.assert_close(run_in_chunks(double, x[:1], (2, None)), x[:1] * 2)  # dynamic from 2: padded
    assert seen == [2]


class _Conv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    model, d = _Conv().eval(), tmp_path_factory.mktemp("programs")
    x = torch.randn(4, 1, 8, 8)
    torch.export.save(torch.export.export(model, (x,)), str(d / "static4.pt2"))
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: Dim("batch", min=1, max=8)},)),
                      str(d / "bounded8.pt2"))
    return {"static": d / "static4.pt2", "bounded": d / "bounded8.pt2"}


def _spec(method: str, augment: str) -> JobSpec:
    return JobSpec.model_validate({
        "teacher": {"checkpoint": "art_x"}, "student": {"architecture": "mlp", "kwargs": {"hidden": [16]}},
        "dataset": {"name": "digits", "augment": augment}, "distillation": {"method": method},
        "training": {"epochs": 1, "batch_size": 64, "lr": 0.05}, "resources": {"device": "cpu", "precision": "fp32"}})


@pytest.mark.parametrize(("program", "method", "augment", "cache"), [
    # the per-step teacher (batches of 64 to a program taking at most 8) and the teacher's evaluation; the
    # cache over the train split with logits alone is tests/e2e/test_foreign_teacher.py's path
    ("bounded", "kd", "standard", OFF_AUGMENT),
    ("static", "fitnets", "none", BUILT),  # features cached through hooks, from a static batch of 4
    ("static", "fitnets", "standard", OFF_AUGMENT),  # features per step
])
def test_every_inference_path_fits_the_programs_batch(digits: Any, programs: dict[str, Path], tmp_path: Path,
                                                      program: str, method: str, augment: str, cache: str) -> None:
    cpu = torch.device("cpu")
    module = load_teacher(programs[program], "export", architecture=None, kwargs={}, num_classes=10, in_channels=1,
                          input_size=(8, 8), device=cpu)
    teacher = Teacher(TeacherIO(module, digits.info), checksum=f"{program}-program")
    report = run(_spec(method, augment), digits, [teacher], tmp_path / "work", cache_dir=tmp_path / "cache")
    # BUILT is followed by the logits' format, e.g. "built (fp32 logits)"
    assert report["teacher_cache"].startswith(cache), report["teacher_cache"]
    # the programs are untrained (their guards are what is under test), so the student learns from labels
    # only through the (1 - alpha) term: one epoch of digits with fitnets + jitter sits near chance, hence no
    # accuracy floor; a guard that refused a batch would have failed the run above
    assert 0.0 <= report["teacher"]["top1"] <= 1.0 and 0.0 <= report["student"]["top1"] <= 1.0
    assert len(report["epochs"]) == 1
