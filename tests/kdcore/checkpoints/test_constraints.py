"""kdcore.checkpoints.constraints: what input an uploaded program accepts, recorded at upload
(`meta["input"]`) and obeyed at run time: .pt2 programs with a static, bounded or dynamic batch and a
fixed or dynamic image size, ONNX models with batch 1, batch 32 or a symbolic batch. Each runs on batch
sizes its limits refuse (chunked, the last chunk padded) and gives the source model's logits, and a
feature method takes features from a fixed-batch program."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.export import Dim

from kdcore.checkpoints import inspect_upload
from kdcore.methods import METHODS
from tests.kdcore.checkpoints.conftest import load_toy_teacher


class _Conv(nn.Module):
    """A small CNN whose pooling makes it take any image size (the dynamic-size case needs that)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


@pytest.fixture(scope="module")
def conv() -> nn.Module:
    torch.manual_seed(0)
    return _Conv().eval()


def _save_pt2(model: nn.Module, path: Path, batch: int, dynamic: Any) -> Path:
    x = torch.randn(batch, 1, 8, 8)
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=dynamic), str(path))
    return path


H, W = Dim("h", min=4, max=64), Dim("w", min=4, max=64)
PT2_CASES = {
    # name: (example batch, dynamic_shapes, meta["input"] expected)
    "static": (4, None, {"batch": "static", "batch_min": 4, "batch_max": 4, "shape": [1, 8, 8]}),
    "bounded": (2, ({0: Dim("batch", min=1, max=3)},), {"batch": "bounded", "batch_min": 1, "batch_max": 3,
                                                         "shape": [1, 8, 8]}),
    "bounded_from_2": (2, ({0: Dim("batch", min=2, max=5)},), {"batch": "bounded", "batch_min": 2,
                                                               "batch_max": 5, "shape": [1, 8, 8]}),
    "dynamic": (2, ({0: Dim("batch")},), {"batch": "dynamic", "batch_min": 1, "batch_max": None,
                                          "shape": [1, 8, 8]}),
    "dynamic_size": (2, ({0: Dim("batch"), 2: H, 3: W},), {"batch": "dynamic", "batch_min": 1, "batch_max": None,
                                                           "shape": [1, None, None]}),
}


@pytest.mark.parametrize("case", list(PT2_CASES))
def test_pt2_constraints_are_recorded_and_obeyed(case: str, conv: nn.Module, tmp_path: Path) -> None:
    batch, dynamic, want = PT2_CASES[case]
    path = _save_pt2(conv, tmp_path / f"{case}.pt2", batch, dynamic)
    assert inspect_upload(path, path.name)["input"] == {**want, "dtype": "float32"}
    teacher = load_toy_teacher(path, "export", architecture=None, kwargs={})
    assert teacher.batch_limits == (want["batch_min"], want["batch_max"])
    for n in (1, 7):  # below a lower bound, above an upper one, not a multiple of a static batch
        x = torch.randn(n, 1, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(teacher(x), conv(x), atol=1e-5, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("batch", [1, 32, "symbolic"])
def test_onnx_batch_constraints_are_recorded_and_obeyed(batch: int | str, conv: nn.Module,
                                                         tmp_path: Path) -> None:
    from kdcore.checkpoints import OnnxModule

    path = tmp_path / f"b{batch}.onnx"
    example = torch.randn(batch if isinstance(batch, int) else 2, 1, 8, 8)
    axes = {"input": {0: "batch"}} if batch == "symbolic" else None
    with torch.no_grad():
        torch.onnx.export(conv, (example,), str(path), dynamo=False, input_names=["input"], dynamic_axes=axes)
    fixed = batch if isinstance(batch, int) else None
    assert inspect_upload(path, path.name)["input"] == {
        "batch": "dynamic" if fixed is None else "static", "batch_min": fixed or 1, "batch_max": fixed,
        "shape": [1, 8, 8], "dtype": "float32"}
    teacher = OnnxModule.from_file(path)
    x = torch.randn(33, 1, 8, 8)  # 33 chunks of 1, two of 32 (the second padded), or one call
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), conv(x), atol=1e-5, rtol=0)


def test_feature_method_on_a_fixed_batch_program(conv: nn.Module, tmp_path: Path) -> None:
    """The features of every row, not only the last chunk's: the distiller chunks before its hooks."""
    path = _save_pt2(conv, tmp_path / "fixed.pt2", 4, None)
    teacher = load_toy_teacher(path, "export", architecture=None, kwargs={})
    student = _Conv()
    d = METHODS.create("fitnets", student, [teacher], 4.0, 0.9,
                       {"pairs": [{"teacher": "features", "student": "features"}], "hint_weight": 1.0, "kd": True})
    x = torch.randn(6, 1, 8, 8)
    d.setup(x)
    out = d.teacher_forward(x)
    with torch.no_grad():
        torch.testing.assert_close(out.features["features"], conv.features(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.logits[0], conv(x), atol=1e-5, rtol=0)
