"""kdcore.checkpoints.inspection: facts about each upload format, and bad files answered with CheckpointError."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

from kdcore.checkpoints import CheckpointError, inspect_upload
from tests.kdcore.checkpoints.conftest import TEACHER_FILES, OpenOnUnpickle, load_toy_teacher


@pytest.mark.parametrize(("name", "fmt", "input_shape"), TEACHER_FILES)
def test_inspect_each_format(files: dict, name: str, fmt: str, input_shape: list | None) -> None:
    info = inspect_upload(files["dir"] / name, name)
    assert info["format"] == fmt
    assert info["num_outputs"] == 10
    assert info["input_shape"] == input_shape
    assert info["params"] == sum(p.numel() for p in files["model"].parameters())
    assert info["tensors"] >= 4
    json.dumps(info)  # JSON-ready


GARBAGE = [b"\x00\x01garbage" * 50, b"PK\x03\x04" + os.urandom(300),
           (40).to_bytes(8, "little") + b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 99]}}']


@pytest.mark.parametrize("ext", [".safetensors", ".pt", ".pth", ".pt2", ".onnx", ".npz"])
@pytest.mark.parametrize("content", GARBAGE, ids=["bytes", "zip-magic", "safetensors-like"])
def test_garbage_is_a_checkpoint_error(tmp_path: Path, ext: str, content: bytes) -> None:
    path = tmp_path / f"junk{ext}"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        inspect_upload(path, path.name)
    fmt = {".safetensors": "safetensors", ".pt": "state_dict", ".pth": "state_dict", ".pt2": "export",
           ".onnx": "onnx", ".npz": "npz"}[ext]
    with pytest.raises(CheckpointError):
        load_toy_teacher(path, fmt)


def test_truncated_files_are_checkpoint_errors(files: dict, tmp_path: Path) -> None:
    for name, _, _ in TEACHER_FILES:
        data = (files["dir"] / name).read_bytes()
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError):
            inspect_upload(path, name)


def test_inspect_npz(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez_compressed(path, x_train=np.zeros((5, 1, 8, 8), np.uint8), y_train=np.arange(5))
    info = inspect_upload(path, path.name)
    assert info["format"] == "npz" and info["tensors"] == 2
    assert info["metadata"]["arrays"] == {"x_train": {"shape": [5, 1, 8, 8], "dtype": "uint8"},
                                          "y_train": {"shape": [5], "dtype": "int64"}}


def test_npz_with_object_array_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([OpenOnUnpickle(marker)], dtype=object))
    with pytest.raises(CheckpointError, match="Python objects"):
        inspect_upload(path, path.name)
    assert not marker.exists()


def test_npz_reader_refuses_other_members_and_names_the_upload(tmp_path: Path) -> None:
    # the .npy headers are read by kdcore.datasets.npz.iter_npz_headers; messages still name the upload
    path = tmp_path / "stored-under-an-id"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", "hello")
    with pytest.raises(CheckpointError, match=r"^'mine\.npz': member 'notes\.txt' is not a \.npy array$"):
        inspect_upload(path, "mine.npz")
    empty = tmp_path / "empty.npz"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("arrays/", b"")  # folders are skipped
    with pytest.raises(CheckpointError, match="holds no arrays"):
        inspect_upload(empty, empty.name)
