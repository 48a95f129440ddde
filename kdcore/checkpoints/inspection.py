"""What an uploaded file holds, read without building or running any model: `inspect_upload`.

The API process calls this on every upload (and at submit time); it answers with JSON-ready facts (format,
output count, input shape, tensor and parameter counts, metadata) or a CheckpointError for the user. One
reader per format; .pt2 programs are vetted first (`kdcore.checkpoints.pt2_vetting`), .npz archives are read
from their .npy headers only (`kdcore.datasets.npz.iter_npz_headers`), image-folder zips from their
directory only.
"""
from __future__ import annotations

import math
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from kdcore.checkpoints.constraints import onnx_input, program_input
from kdcore.checkpoints.formats import _LABELS, detect_format
from kdcore.checkpoints.pt2_vetting import _load_export_program
from kdcore.checkpoints.reading import (
    _decode_metadata,
    _dims,
    _parse_onnx,
    _read_state_dict,
    _reading,
)
from kdcore.datasets.npz import iter_npz_headers
from kdcore.errors import CheckpointError, DatasetError

# Zip bomb limits for image-folder uploads: what the members would expand to, in all and per byte.
_MAX_UNZIPPED_BYTES = 8 * 1024**3
_MAX_ZIP_RATIO = 200
_MAX_ZIP_MEMBERS = 2_000_000
# Buffers, not parameters: left out of the "params" count, like count_params() does for a model.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
# Names classifier heads go by (torchvision, timm, the CIFAR zoo); see _guess_num_outputs.
# ONNX element types as torch names them, for the `input` constraints
_ONNX_DTYPES = {"FLOAT": "float32", "FLOAT16": "float16", "BFLOAT16": "bfloat16", "DOUBLE": "float64"}
_HEAD_NAMES = frozenset({"fc", "head", "heads", "classifier", "last_linear", "logits", "linear"})


def inspect_upload(path: Path, filename: str) -> dict[str, Any]:
    """JSON-ready facts about an uploaded file, read without building or running any model.

    Returns {"format", "num_outputs", "input_shape", "input", "tensors", "params", "metadata"}:
    num_outputs is the class count when known or guessed (see _guess_num_outputs), input_shape the
    full input shape including the batch dimension, with None for dynamic or unknown sizes (None
    when the file does not say, as for state dicts), input the constraints of a .pt2 or ONNX program's
    input (batch static/bounded/dynamic with its min and max, per-sample shape, dtype:
    `kdcore.checkpoints.constraints`; None for other formats), tensors the number of stored tensors,
    params the number of parameter values (BN running statistics left out). Raises CheckpointError only.
    """
    path = Path(path)
    with _reading(filename):
        with open(path, "rb") as f:
            head = f.read(64)
    fmt = detect_format(filename, head)
    result: dict[str, Any] = {"format": fmt, "num_outputs": None, "input_shape": None, "input": None, "tensors": None,
                              "params": None, "metadata": {}}
    with _reading(f"{filename!r} as {_LABELS[fmt]}"):
        result.update(_INSPECTORS[fmt](path, filename))
    return result


def _natural_key(name: str) -> list[Any]:
    # "layers.10.weight" after "layers.9.weight", as the model defines them
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name)]


def _guess_num_outputs(order: list[str], shapes: Mapping[str, list[int]]) -> tuple[int | None, str | None]:
    """Guess the class count from the classifier's weight: (count, key it came from).

    A guess, since a state dict does not say which layer is last: among the 2-D `*.weight` tensors,
    prefer those whose path has a head-like part (fc, head, heads, classifier, last_linear, logits,
    linear), the shallowest such part first (a top-level `fc` beats a squeeze-excite block's
    `features.3.se.fc`), then the last in `order`; without any, the last 2-D weight in `order`.
    Its dim 0 is the output count. `order` is the file's key order for .pt files; safetensors sorts
    its keys, so callers pass a natural sort there.
    """
    mats = [k for k in order if k.endswith("weight") and len(shapes[k]) == 2]
    if not mats:
        return None, None
    best: tuple[int, int] | None = None
    pick = None
    for i, key in enumerate(mats):
        parts = key.split(".")[:-1]
        depth = next((d for d, p in enumerate(parts) if p in _HEAD_NAMES), None)
        if depth is not None and (best is None or (-depth, i) > best):
            best, pick = (-depth, i), key
    pick = pick or mats[-1]
    return int(shapes[pick][0]), pick


def _count_values(shapes: Mapping[str, list[int]]) -> int:
    return sum(math.prod(s) for k, s in shapes.items() if not k.endswith(_BUFFER_SUFFIXES))


def _inspect_safetensors(path: Path, filename: str) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:  # reads the header only
        raw = f.metadata() or {}
        shapes: dict[str, list[int]] = {}
        dtypes: set[str] = set()
        for key in f.keys():
            sl = f.get_slice(key)
            shapes[key] = [int(d) for d in sl.get_shape()]
            dtypes.add(str(sl.get_dtype()))
    meta = _decode_metadata(raw)
    out: dict[str, Any] = {"tensors": len(shapes), "params": _count_values(shapes)}
    num_classes = meta.get("num_classes")
    if isinstance(num_classes, int) and not isinstance(num_classes, bool):
        out["num_outputs"] = num_classes
    else:
        out["num_outputs"], source = _guess_num_outputs(sorted(shapes, key=_natural_key), shapes)
        if source:
            meta["num_outputs_from"] = source
    in_channels, size = meta.get("in_channels"), meta.get("input_size")
    if isinstance(in_channels, int) and isinstance(size, list) and len(size) == 2:
        out["input_shape"] = [None, in_channels, *size]
    meta["dtypes"] = sorted(dtypes)
    out["metadata"] = meta
    return out


def _inspect_state_dict(path: Path, filename: str) -> dict[str, Any]:
    sd, container = _read_state_dict(path, filename)
    shapes = {k: list(v.shape) for k, v in sd.items()}
    num_outputs, source = _guess_num_outputs(list(sd), shapes)
    meta: dict[str, Any] = {"container": container, "dtypes": sorted({str(v.dtype) for v in sd.values()})}
    if source:
        meta["num_outputs_from"] = source
    return {"num_outputs": num_outputs, "tensors": len(sd), "params": _count_values(shapes), "metadata": meta}


def _inspect_export(path: Path, filename: str) -> dict[str, Any]:
    ep = _load_export_program(path, filename)
    sig = ep.graph_signature
    user_inputs, user_outputs = list(sig.user_inputs), list(sig.user_outputs)
    nodes = {n.name: n for n in ep.graph.nodes}
    out: dict[str, Any] = {
        "tensors": len(ep.state_dict) + len(ep.constants),
        "params": sum(ep.state_dict[name].numel() for name in sig.parameters if name in ep.state_dict),
        "metadata": {"inputs": len(user_inputs), "outputs": len(user_outputs)},
    }
    first_in = nodes.get(user_inputs[0]) if user_inputs else None
    val = first_in.meta.get("val") if first_in is not None else None
    if isinstance(val, torch.Tensor):
        out["input_shape"] = _dims(val.shape)
    if len(user_inputs) == 1:
        out["input"] = program_input(ep).to_meta()
    first_out = nodes.get(str(user_outputs[0])) if user_outputs and user_outputs[0] is not None else None
    val = first_out.meta.get("val") if first_out is not None else None
    if isinstance(val, torch.Tensor) and val.dim() >= 1:
        out["num_outputs"] = _dims(val.shape)[-1]
    return out


def _inspect_onnx(path: Path, filename: str) -> dict[str, Any]:
    import onnx

    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                   onnx.TensorProto.DOUBLE}

    model = _parse_onnx(path.read_bytes(), filename)
    graph = model.graph

    def value_info(v: onnx.ValueInfoProto) -> dict[str, Any]:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] \
            if t.HasField("shape") else None
        dtype = onnx.TensorProto.DataType.Name(t.elem_type) if v.type.HasField("tensor_type") else None
        return {"name": v.name, "shape": shape, "dtype": dtype}

    init_names = {t.name for t in graph.initializer}
    # old exporters list the weights among the inputs too
    inputs = [value_info(v) for v in graph.input if v.name not in init_names]
    outputs = [value_info(v) for v in graph.output]
    out_shape = outputs[0]["shape"] if outputs else None
    meta: dict[str, Any] = {
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "ir_version": int(model.ir_version),
        "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "inputs": inputs,
        "outputs": outputs,
    }
    if model.metadata_props:
        meta["props"] = {p.key: p.value for p in model.metadata_props}
    first = inputs[0] if inputs else None
    return {
        "input_shape": first["shape"] if first else None,
        "input": onnx_input(first["shape"], _ONNX_DTYPES.get(first["dtype"], first["dtype"])).to_meta()
        if first and len(inputs) == 1 else None,
        "num_outputs": out_shape[-1] if out_shape else None,
        "tensors": len(graph.initializer),
        # floating-point initializers only: integer ones are shape constants, not weights
        "params": sum(math.prod(t.dims) for t in graph.initializer if t.data_type in float_types),
        "metadata": meta,
    }


def _inspect_npz(path: Path, filename: str) -> dict[str, Any]:
    # Headers only: a dataset may be large and the API process only needs names, shapes and dtypes.
    arrays: dict[str, dict[str, Any]] = {}
    try:
        # name=repr(filename): messages quote the upload's name, as every CheckpointError here does
        for name, shape, dtype in iter_npz_headers(path, name=repr(filename), only_arrays=True):
            if dtype.hasobject:
                raise CheckpointError(f"{filename!r}: array {name!r} holds Python objects (a pickle), which "
                                      "are not loaded; store plain numeric arrays")
            arrays[name] = {"shape": list(shape), "dtype": str(dtype)}
    except DatasetError as e:
        raise CheckpointError(str(e)) from e
    if not arrays:
        raise CheckpointError(f"{filename!r} holds no arrays")
    return {"tensors": len(arrays), "metadata": {"arrays": arrays}}


def _inspect_zip(path: Path, filename: str) -> dict[str, Any]:
    """Member sizes from the zip directory only: refuses decompression bombs before anything is inflated."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
    if len(infos) > _MAX_ZIP_MEMBERS:
        raise CheckpointError(f"{filename!r} holds {len(infos)} entries; at most {_MAX_ZIP_MEMBERS} are accepted")
    for info in infos:
        # members are read into memory, never extracted; a name that would climb out of a folder if someone
        # did extract the archive still says the file was made to attack, so it is refused outright
        parts = info.filename.replace("\\", "/").split("/")
        if info.filename.startswith(("/", "\\")) or ".." in parts or (parts[0][1:2] == ":"):
            raise CheckpointError(f"{filename!r} holds an entry with an unsafe path ({info.filename!r}): "
                                  "absolute paths and '..' are not accepted")
    total = sum(i.file_size for i in infos)
    packed = max(1, sum(i.compress_size for i in infos))
    if total > _MAX_UNZIPPED_BYTES or total / packed > _MAX_ZIP_RATIO:
        raise CheckpointError(f"{filename!r} would expand to {total} bytes ({total / packed:.0f}x its size); "
                              f"the limits are {_MAX_UNZIPPED_BYTES} bytes and {_MAX_ZIP_RATIO}x")
    return {"metadata": {"entries": len(infos), "unzipped_bytes": total}}


_INSPECTORS: dict[str, Callable[[Path, str], dict[str, Any]]] = {
    "safetensors": _inspect_safetensors,
    "state_dict": _inspect_state_dict,
    "export": _inspect_export,
    "onnx": _inspect_onnx,
    "npz": _inspect_npz,
    "imagefolder": _inspect_zip,
}

