"""kdcore.checkpoints.runtimes: ONNX and torch.export teachers with a fixed batch run in chunks."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdcore.checkpoints import OnnxModule, inspect_upload
from tests.kdcore.checkpoints.conftest import load_toy_teacher


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_model_with_fixed_batch_runs_in_chunks(files: dict, tmp_path: Path) -> None:
    model, x = files["model"], files["x"]
    path = tmp_path / "fixed.onnx"
    with torch.no_grad():
        torch.onnx.export(model, (x[:4],), str(path), dynamo=False, input_names=["input"])
    assert inspect_upload(path, path.name)["input_shape"] == [4, 1, 8, 8]
    teacher = OnnxModule.from_file(path)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), files["logits"], atol=1e-5, rtol=0)


def test_exported_program_with_fixed_batch_runs_in_chunks(files: dict, tmp_path: Path) -> None:
    model, x = files["model"], files["x"]
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(model, (x[:4],)), str(path))  # no dynamic_shapes: batch is 4
    assert inspect_upload(path, path.name)["input_shape"] == [4, 1, 8, 8]
    teacher = load_toy_teacher(path, "export", architecture=None, kwargs={})
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), files["logits"], atol=1e-5, rtol=0)
