"""kdcore.checkpoints.formats: which format an upload is, from its name and first bytes."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from kdcore.checkpoints import FORMATS, CheckpointError, detect_format, inspect_upload


def test_detect_format_by_extension_and_magic() -> None:
    header = json.dumps({"__metadata__": {}}).encode()
    safetensors_head = len(header).to_bytes(8, "little") + header
    assert detect_format("t.SAFETENSORS", safetensors_head) == "safetensors"
    assert detect_format("a/b/t.pth", b"PK\x03\x04rest") == "state_dict"
    assert detect_format("t.pt2", b"PK\x03\x04rest") == "export"
    assert detect_format("t.npz", b"PK\x03\x04rest") == "npz"
    assert detect_format("t.onnx", b"\x08\x08") == "onnx"
    assert detect_format("images.zip", b"PK\x03\x04rest") == "imagefolder"
    assert set(FORMATS) == {"safetensors", "state_dict", "export", "onnx", "npz", "imagefolder"}
    with pytest.raises(CheckpointError, match="not a zip archive"):
        detect_format("t.pt", pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="safetensors header"):
        detect_format("t.safetensors", b"PK\x03\x04" + b"\x00" * 20)
    with pytest.raises(CheckpointError, match="empty"):
        detect_format("t.onnx", b"")


@pytest.mark.parametrize("filename", ["model.h5", "model.ckpt", "model", "weights.bin"])
def test_unknown_extension_lists_accepted(tmp_path: Path, filename: str) -> None:
    path = tmp_path / "upload"
    path.write_bytes(b"PK\x03\x04 whatever")
    with pytest.raises(CheckpointError) as err:
        inspect_upload(path, filename)
    for ext in (".safetensors", ".pt", ".pth", ".pt2", ".onnx", ".npz"):
        assert ext in str(err.value)
