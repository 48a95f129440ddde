"""kdcore.checkpoints: formats in and out, and that no uploaded file gets to run code."""
from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from kdcore.checkpoints import (
    FORMATS,
    STUDENT_FORMAT,
    CheckpointError,
    OnnxModule,
    detect_format,
    export_onnx,
    export_program,
    inspect_upload,
    load_student,
    load_teacher,
    save_student,
)
from kdcore.datasets.base import DatasetInfo
from kdcore.models import create_model

CPU = torch.device("cpu")
HIDDEN = [32, 16]
SIZE = (8, 8)
INFO = DatasetInfo(name="toy", num_classes=10, in_channels=1, image_size=SIZE, mean=(0.5,), std=(0.25,),
                   class_names=tuple(f"c{i}" for i in range(10)), train_size=100, test_size=20)


def _mlp(hidden: list[int] = HIDDEN) -> nn.Module:
    return create_model("mlp", num_classes=10, in_channels=1, input_size=SIZE, hidden=hidden).eval()


def _teacher(path: Path, fmt: str, architecture: str | None = "mlp", kwargs: dict | None = None) -> nn.Module:
    kwargs = {"hidden": HIDDEN} if kwargs is None else kwargs
    return load_teacher(path, fmt, architecture=architecture, kwargs=kwargs, num_classes=10, in_channels=1,
                        input_size=SIZE, device=CPU)


class _OpenOnUnpickle:
    """Unpickling this object opens (creates) a file: stands in for any code an attacker would run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One mlp in every teacher format, plus its logits on a fixed batch."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("ckpt")
    model = _mlp()
    x = torch.randn(6, 1, *SIZE)
    save_file(model.state_dict(), str(d / "plain.safetensors"))
    torch.save(model.state_dict(), d / "plain.pt")
    torch.save({"state_dict": model.state_dict(), "epoch": 7, "best_acc": 0.9}, d / "wrapped.pth")
    export_program(model, x[:1], d / "program.pt2")  # a batch of 1 must still give a dynamic batch
    export_onnx(model, x, d / "model.onnx")
    with torch.no_grad():
        logits = model(x)
    return {"dir": d, "model": model, "x": x, "logits": logits}


TEACHER_FILES = [("plain.safetensors", "safetensors", None), ("plain.pt", "state_dict", None),
                 ("wrapped.pth", "state_dict", None), ("program.pt2", "export", [None, 1, 8, 8]),
                 ("model.onnx", "onnx", [None, 1, 8, 8])]


# ---- students ------------------------------------------------------------------------------------


def test_student_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = _mlp()
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
        save_student(_mlp(), tmp_path / "s.safetensors", architecture="mlp", kwargs={"hidden": HIDDEN},
                     dataset=INFO, extra={"architecture": "x"})


def test_load_student_refuses_other_safetensors(files: dict) -> None:
    with pytest.raises(CheckpointError, match="not a Distillery student"):
        load_student(files["dir"] / "plain.safetensors")


# ---- teachers in every format --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "fmt", "input_shape"), TEACHER_FILES)
def test_inspect_each_format(files: dict, name: str, fmt: str, input_shape: list | None) -> None:
    info = inspect_upload(files["dir"] / name, name)
    assert info["format"] == fmt
    assert info["num_outputs"] == 10
    assert info["input_shape"] == input_shape
    assert info["params"] == sum(p.numel() for p in files["model"].parameters())
    assert info["tensors"] >= 4
    json.dumps(info)  # JSON-ready


@pytest.mark.parametrize(("name", "fmt", "input_shape"), TEACHER_FILES)
def test_load_teacher_each_format(files: dict, name: str, fmt: str, input_shape: list | None) -> None:
    teacher = _teacher(files["dir"] / name, fmt, **({} if fmt in ("safetensors", "state_dict") else
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
    teacher = _teacher(path, "export", architecture=None, kwargs={})
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), files["logits"], atol=1e-5, rtol=0)


def test_state_dict_with_dataparallel_prefix(files: dict, tmp_path: Path) -> None:
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in files["model"].state_dict().items()}, path)
    with torch.no_grad():
        out = _teacher(path, "state_dict")(files["x"])
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
            _teacher(files["dir"] / name, fmt, architecture=architecture, kwargs=kwargs)


def test_load_teacher_refuses_dataset_and_unknown_format(files: dict) -> None:
    with pytest.raises(CheckpointError, match="dataset"):
        _teacher(files["dir"] / "plain.pt", "npz")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        _teacher(files["dir"] / "plain.pt", "pickle")


# ---- detection and bad files ---------------------------------------------------------------------


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
        _teacher(path, fmt)


def test_truncated_files_are_checkpoint_errors(files: dict, tmp_path: Path) -> None:
    for name, _, _ in TEACHER_FILES:
        data = (files["dir"] / name).read_bytes()
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError):
            inspect_upload(path, name)


def test_non_state_dict_pt_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        inspect_upload(path, path.name)


# ---- nothing uploaded runs code ------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_pt_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    zipped, raw = tmp_path / "evil.pt", tmp_path / "evil_raw.pth"
    torch.save({"weight": _OpenOnUnpickle(marker)}, zipped)  # torch's zip format: reaches torch.load
    raw.write_bytes(pickle.dumps(_OpenOnUnpickle(marker)))  # bare pickle: refused by its first bytes
    for path in (zipped, raw):
        with pytest.raises(CheckpointError):
            inspect_upload(path, path.name)
        with pytest.raises(CheckpointError):
            _teacher(path, "state_dict")
    assert not marker.exists()


def test_pickled_module_gets_advice(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(_mlp(), path)
    with pytest.raises(CheckpointError, match=r"save model\.state_dict\(\)"):
        inspect_upload(path, path.name)
    with pytest.raises(CheckpointError, match=r"state_dict\(\)"):
        _teacher(path, "state_dict")


def _rewrite_pt2(src: Path, dst: Path, edit: Callable[[dict[str, bytes], str], None]) -> None:
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    root = next(iter(entries)).split("/")[0]
    edit(entries, root)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)


def _edit_program(entries: dict[str, bytes], root: str, fn: Callable[[dict], None]) -> None:
    key = f"{root}/models/model.json"
    program = json.loads(entries[key])
    fn(program)
    entries[key] = json.dumps(program).encode()


def _pickled(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _first_node(program: dict) -> dict:
    return program["graph_module"]["graph"]["nodes"][0]


def _set_expr(program: dict, expr: str) -> None:
    # the first dynamic size torch recorded; sympify would evaluate this string
    stack: list = [program]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if "expr_str" in o:
                o["expr_str"] = expr
                return
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    raise AssertionError("no symbolic size in the program")


def _use_pickle(entries: dict[str, bytes], root: str, marker: Path) -> None:
    key = f"{root}/data/weights/model_weights_config.json"
    config = json.loads(entries[key])
    name, entry = next(iter(config["config"].items()))
    entry["use_pickle"] = True
    entries[f"{root}/data/weights/{entry['path_name']}"] = _pickled(_OpenOnUnpickle(marker))
    entries[key] = json.dumps(config).encode()


PT2_ATTACKS: dict[str, Callable[[dict[str, bytes], str, Path], None]] = {
    # torch.load(weights_only=True) fails on these, then torch retries with weights_only=False
    "sample-inputs-pickle": lambda e, r, m: e.__setitem__(f"{r}/data/sample_inputs/model.pt",
                                                          _pickled(_OpenOnUnpickle(m))),
    "weights-use-pickle": _use_pickle,
    "opaque-constant": lambda e, r, m: e.__setitem__(f"{r}/data/constants/opaque_obj_0",
                                                     pickle.dumps(_OpenOnUnpickle(m))),
    "aotinductor-binary": lambda e, r, m: e.__setitem__(f"{r}/data/aotinductor/model/model.so", b"\x7fELF"),
    # sympy.sympify evaluates shape expressions; .module() exec's guards
    "shape-expression": lambda e, r, m: _edit_program(
        e, r, lambda p: _set_expr(p, f"__import__('builtins').open('{m}', 'w') and Symbol('s0')")),
    "guard": lambda e, r, m: _edit_program(
        e, r, lambda p: p.__setitem__("guards_code", [f"__import__('builtins').open('{m}', 'w') is None"])),
    "guard-escape": lambda e, r, m: _edit_program(
        e, r, lambda p: p.__setitem__("guards_code", ["L['x\"); open(1'].size()[0] >= 0"])),
    "operator": lambda e, r, m: _edit_program(
        e, r, lambda p: _first_node(p).__setitem__("target", "torch.os.system")),
    "file-reading-op": lambda e, r, m: _edit_program(
        e, r, lambda p: _first_node(p).__setitem__("target", "torch.ops.aten.from_file.default")),
    "name-injection": lambda e, r, m: _edit_program(
        e, r, lambda p: _first_node(p)["outputs"][0]["as_tensor"].__setitem__("name", 'x")\nimport os\n("')),
}


@pytest.mark.parametrize("attack", sorted(PT2_ATTACKS))
def test_tampered_pt2_is_refused(files: dict, tmp_path: Path, attack: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / f"{attack}.pt2"
    _rewrite_pt2(files["dir"] / "program.pt2", path, lambda e, r: PT2_ATTACKS[attack](e, r, marker))
    with pytest.raises(CheckpointError, match="refused"):
        inspect_upload(path, path.name)
    with pytest.raises(CheckpointError, match="refused"):
        _teacher(path, "export", architecture=None, kwargs={})
    assert not marker.exists()


def test_rewritten_but_untampered_pt2_still_loads(files: dict, tmp_path: Path) -> None:
    # guards the test above: our zip rewriting alone does not make torch refuse the file
    path = tmp_path / "same.pt2"
    _rewrite_pt2(files["dir"] / "program.pt2", path, lambda e, r: None)
    assert inspect_upload(path, path.name)["num_outputs"] == 10


def test_onnx_with_external_data_is_refused(files: dict, tmp_path: Path) -> None:
    model = onnx.load(str(files["dir"] / "model.onnx"))
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    with pytest.raises(CheckpointError, match="external data"):
        inspect_upload(path, path.name)
    with pytest.raises(CheckpointError, match="external data"):
        _teacher(path, "onnx", architecture=None, kwargs={})


# ---- npz -----------------------------------------------------------------------------------------


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
    np.savez(path, x=np.array([_OpenOnUnpickle(marker)], dtype=object))
    with pytest.raises(CheckpointError, match="Python objects"):
        inspect_upload(path, path.name)
    assert not marker.exists()
