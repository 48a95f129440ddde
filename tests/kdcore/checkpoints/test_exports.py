"""kdcore.checkpoints.exports: export_program and export_onnx write files we accept, batch dimension dynamic.

The `files` fixture (conftest) writes every teacher file through these; test_inspection and test_building
check what they hold and how they run. Here: what the writers promise beyond that.
"""
from __future__ import annotations

from pathlib import Path

import torch

from kdcore.checkpoints import export_onnx, export_program, inspect_upload
from tests.kdcore.checkpoints.conftest import toy_mlp


def test_exports_keep_the_models_mode_and_a_dynamic_batch(tmp_path: Path) -> None:
    model = toy_mlp().train()
    example = torch.randn(1, 1, 8, 8)  # a batch of 1 must still give a dynamic batch
    export_program(model, example, tmp_path / "sub" / "program.pt2")
    export_onnx(model, example, tmp_path / "sub" / "model.onnx")
    assert model.training  # exported in eval mode, then put back
    program = inspect_upload(tmp_path / "sub" / "program.pt2", "program.pt2")
    assert program["input_shape"] == [None, 1, 8, 8]
    onnx_info = inspect_upload(tmp_path / "sub" / "model.onnx", "model.onnx")
    assert onnx_info["input_shape"] == [None, 1, 8, 8]
    assert [v["name"] for v in onnx_info["metadata"]["inputs"]] == ["input"]
    assert [v["name"] for v in onnx_info["metadata"]["outputs"]] == ["logits"]
    assert not list((tmp_path / "sub").glob("*.data"))  # one file: no external weights
