"""Writing models in the teacher formats we accept (for users and tests): a torch.export program (.pt2)
and a single-file ONNX model, both with a dynamic batch dimension.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from kdcore.checkpoints.reading import _short

log = logging.getLogger(__name__)

def _two_rows(example: torch.Tensor) -> torch.Tensor:
    # A batch of 1 makes export treat the batch size as the constant 1; 2 keeps it symbolic.
    return torch.cat([example, example]) if example.shape[0] == 1 else example


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def export_program(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.export the model in eval mode, batch dimension dynamic where the model allows, and save."""
    with _eval_mode(model):
        ep = torch.export.export(model, (_two_rows(example),), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(ep, str(path))


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Write a single-file ONNX model (input "input", output "logits", dynamic batch dimension).

    Uses the torch.export-based exporter (dynamo=True, torch's default since 2.9; needs onnxscript);
    should it fail for a model, falls back to the TorchScript-based exporter (dynamo=False).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _two_rows(example)
    with _eval_mode(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False, verbose=False,
                              input_names=["input"], output_names=["logits"], dynamic_shapes=({0: "batch"},))
            return
        except Exception as e:
            log.warning("dynamo ONNX export failed (%s); using the TorchScript exporter", _short(e))
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
