"""kdcore.checkpoints.reading: state dicts read weights-only (pickles refused, with advice), ONNX
external data refused; checked through inspect_upload (API) and load_teacher (worker)."""
from __future__ import annotations

import pickle
from pathlib import Path

import onnx
import pytest
import torch

from kdcore.checkpoints import CheckpointError, inspect_upload
from tests.kdcore.checkpoints.conftest import OpenOnUnpickle, load_toy_teacher, toy_mlp


def test_non_state_dict_pt_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        inspect_upload(path, path.name)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_pt_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    zipped, raw = tmp_path / "evil.pt", tmp_path / "evil_raw.pth"
    torch.save({"weight": OpenOnUnpickle(marker)}, zipped)  # torch's zip format: reaches torch.load
    raw.write_bytes(pickle.dumps(OpenOnUnpickle(marker)))  # bare pickle: refused by its first bytes
    for path in (zipped, raw):
        with pytest.raises(CheckpointError):
            inspect_upload(path, path.name)
        with pytest.raises(CheckpointError):
            load_toy_teacher(path, "state_dict")
    assert not marker.exists()


def test_pickled_module_gets_advice(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(toy_mlp(), path)
    with pytest.raises(CheckpointError, match=r"save model\.state_dict\(\)"):
        inspect_upload(path, path.name)
    with pytest.raises(CheckpointError, match=r"state_dict\(\)"):
        load_toy_teacher(path, "state_dict")


def test_onnx_with_external_data_is_refused(files: dict, tmp_path: Path) -> None:
    model = onnx.load(str(files["dir"] / "model.onnx"))
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    with pytest.raises(CheckpointError, match="external data"):
        inspect_upload(path, path.name)
    with pytest.raises(CheckpointError, match="external data"):
        load_toy_teacher(path, "onnx", architecture=None, kwargs={})
