"""kdcore.checkpoints.building: load_teacher from every format, and weights that do not fit."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kdcore.checkpoints import CheckpointError
from tests.kdcore.checkpoints.conftest import TEACHER_FILES, load_toy_teacher


@pytest.mark.parametrize(("name", "fmt", "input_shape"), TEACHER_FILES)
def test_load_teacher_each_format(files: dict, name: str, fmt: str, input_shape: list | None) -> None:
    teacher = load_toy_teacher(files["dir"] / name, fmt, **({} if fmt in ("safetensors", "state_dict") else
                                                     {"architecture": None, "kwargs": {}}))
    assert not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.eval()  # the training loop may call it again; exported graphs must not object
    x = files["x"]
    with torch.no_grad():
        out = teacher(x)
        assert out.dtype == torch.float32 and out.shape == (6, 10)
        torch.testing.assert_close(out, files["logits"], atol=1e-5, rtol=0)
        # another batch size (the last batch of an epoch is smaller)
        torch.testing.assert_close(teacher(x[:3]), files["logits"][:3], atol=1e-5, rtol=0)


def test_state_dict_with_dataparallel_prefix(files: dict, tmp_path: Path) -> None:
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in files["model"].state_dict().items()}, path)
    with torch.no_grad():
        out = load_toy_teacher(path, "state_dict")(files["x"])
    torch.testing.assert_close(out, files["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("architecture", "kwargs", "match"), [
    ("mlp", {"hidden": [32, 8]}, "other shape: .*body.2.weight"),
    ("mlp", {"hidden": [32]}, "unexpected: body.2"),
    ("lenet5", {}, "missing: conv1.weight"),
    ("no_such_net", {}, "cannot build architecture 'no_such_net'"),
    (None, {}, "give teacher.architecture"),
])
def test_load_teacher_strict_mismatch(files: dict, architecture: str | None, kwargs: dict,
                                      match: str) -> None:
    for name, fmt in (("plain.safetensors", "safetensors"), ("wrapped.pth", "state_dict")):
        with pytest.raises(CheckpointError, match=match):
            load_toy_teacher(files["dir"] / name, fmt, architecture=architecture, kwargs=kwargs)


def test_load_teacher_refuses_dataset_and_unknown_format(files: dict) -> None:
    with pytest.raises(CheckpointError, match="dataset"):
        load_toy_teacher(files["dir"] / "plain.pt", "npz")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_toy_teacher(files["dir"] / "plain.pt", "pickle")
