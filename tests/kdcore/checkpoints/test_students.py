"""kdcore.checkpoints.students: save_student and load_student, and a student file used as a teacher."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from kdcore.checkpoints import STUDENT_FORMAT, CheckpointError, inspect_upload, load_student, load_teacher, save_student
from tests.kdcore.checkpoints.conftest import CPU, HIDDEN, INFO, SIZE, toy_mlp


def test_student_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = toy_mlp()
    x = torch.randn(5, 1, *SIZE)
    path = tmp_path / "out" / "student.safetensors"
    size = save_student(model, path, architecture="mlp", kwargs={"hidden": HIDDEN}, dataset=INFO,
                        extra={"method": "kd", "test_top1": 0.5, "seed": 0})
    assert size == path.stat().st_size > 0
    assert not list(path.parent.glob("*.tmp"))

    loaded, meta = load_student(path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert meta["format"] == STUDENT_FORMAT and meta["architecture"] == "mlp"
    assert meta["kwargs"] == {"hidden": HIDDEN}
    assert (meta["num_classes"], meta["in_channels"], meta["input_size"]) == (10, 1, [8, 8])
    assert meta["class_names"] == list(INFO.class_names)
    assert meta["input_format"] == json.loads(json.dumps(INFO.describe()))
    assert (meta["method"], meta["test_top1"], meta["seed"]) == ("kd", 0.5, 0)

    # the API checks an earlier job's student like any upload; the worker rebuilds it with no architecture
    info = inspect_upload(path, path.name)
    assert (info["format"], info["num_outputs"], info["input_shape"]) == ("safetensors", 10, [None, 1, 8, 8])
    assert info["metadata"]["architecture"] == "mlp"
    teacher = load_teacher(path, "safetensors", architecture=None, kwargs={}, num_classes=10, in_channels=1,
                           input_size=SIZE, device=CPU)
    with torch.no_grad():
        assert torch.equal(teacher(x), model(x))
    with pytest.raises(CheckpointError, match="num_classes=10"):
        load_teacher(path, "safetensors", architecture=None, kwargs={}, num_classes=100, in_channels=1,
                     input_size=SIZE, device=CPU)


def test_save_student_handles_tied_weights(tmp_path: Path) -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight

    model = Tied()
    path = tmp_path / "tied.safetensors"
    save_student(model, path, architecture="tied", kwargs={}, dataset=INFO)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {"a.weight", "a.bias", "b.bias"}
        assert json.loads(f.metadata()["aliases"]) == {"b.weight": "a.weight"}
        assert torch.equal(f.get_tensor("a.weight"), model.a.weight.detach())


def test_save_student_refuses_reserved_extra(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        save_student(toy_mlp(), tmp_path / "s.safetensors", architecture="mlp", kwargs={"hidden": HIDDEN},
                     dataset=INFO, extra={"architecture": "x"})


def test_load_student_refuses_other_safetensors(files: dict) -> None:
    with pytest.raises(CheckpointError, match="not a Distillery student"):
        load_student(files["dir"] / "plain.safetensors")
