"""Shared by the kdcore.checkpoints tests: a toy mlp, one file of it in every teacher format (the `files`
fixture, built once for the package), and a pickle that would run code if anything unpickled it.

Test modules import the constants and helpers from here (tests.kdcore.checkpoints.conftest), never from
one another.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from kdcore.checkpoints import export_onnx, export_program, load_teacher
from kdcore.datasets.base import DatasetInfo
from kdcore.models import create_model

CPU = torch.device("cpu")
HIDDEN = [32, 16]
SIZE = (8, 8)
INFO = DatasetInfo(name="toy", num_classes=10, in_channels=1, image_size=SIZE, mean=(0.5,), std=(0.25,),
                   class_names=tuple(f"c{i}" for i in range(10)), train_size=100, test_size=20)
# (file name in `files`, format, the input shape inspect_upload reports)
TEACHER_FILES = [("plain.safetensors", "safetensors", None), ("plain.pt", "state_dict", None),
                 ("wrapped.pth", "state_dict", None), ("program.pt2", "export", [None, 1, 8, 8]),
                 ("model.onnx", "onnx", [None, 1, 8, 8])]


def toy_mlp(hidden: list[int] = HIDDEN) -> nn.Module:
    return create_model("mlp", num_classes=10, in_channels=1, input_size=SIZE, hidden=hidden).eval()


def load_toy_teacher(path: Path, fmt: str, architecture: str | None = "mlp",
                     kwargs: dict | None = None) -> nn.Module:
    kwargs = {"hidden": HIDDEN} if kwargs is None else kwargs
    return load_teacher(path, fmt, architecture=architecture, kwargs=kwargs, num_classes=10, in_channels=1,
                        input_size=SIZE, device=CPU)


class OpenOnUnpickle:
    """Unpickling this object opens (creates) a file: stands in for any code an attacker would run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="package")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One mlp in every teacher format, plus its logits on a fixed batch."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt")
    model = toy_mlp()
    x = torch.randn(6, 1, *SIZE)
    save_file(model.state_dict(), str(d / "plain.safetensors"))
    torch.save(model.state_dict(), d / "plain.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 7, "best_acc": 0.9}, d / "wrapped.pth")
    export_program(model, x[:1], d / "program.pt2")  # a batch of 1 must still give a dynamic batch
    export_onnx(model, x, d / "model.onnx")
    with torch.no_grad():
        logits = model(x)
    return {"dir": d, "model": model, "x": x, "logits": logits}
