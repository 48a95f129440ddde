"""Model files in and out: uploaded teacher checkpoints, student weights, export helpers.

Security rule: nothing a user uploads may run code on our side.

- `.pt/.pth` state dicts are read only with ``torch.load(..., weights_only=True)``, which refuses
  pickled classes and functions (a whole ``nn.Module``, a ``__reduce__`` payload).
- `.safetensors` files are plain tensors plus a JSON header; `.npz` files are read with pickles off.
- `.onnx` models are parsed by ``onnx`` and run by onnxruntime; weights kept in external files are
  refused (they would make the runtime open paths the uploader chose).
- `.pt2` programs go through ``torch.export.load``, which its own docs call unsafe for untrusted
  files: in torch 2.14 it unpickles payloads marked ``use_pickle`` (and retries its sample inputs
  with ``weights_only=False``), loads AOTInductor shared libraries, feeds shape expressions to
  ``sympy.sympify`` (an ``eval``) and ``exec``s the program's guard strings in ``.module()``.
  `_check_pt2_archive` therefore accepts only what ``torch.export.save`` writes for a plain program
  and checks every string that reaches one of those sinks before torch sees the file; see there.

Formats by name: "safetensors", "state_dict" (.pt/.pth), "export" (.pt2), "onnx", "npz".
"""
from __future__ import annotations

import ast
import io
import json
import logging
import math
import os
import pickle
import re
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from kdcore.errors import CheckpointError, FeatureError

if TYPE_CHECKING:  # kept out of the import so that the API process pays for them only when used
    import onnx
    import onnxruntime

    from kdcore.datasets.base import DatasetInfo

log = logging.getLogger(__name__)

FORMATS = ("safetensors", "state_dict", "export", "onnx", "npz", "imagefolder")
# Upload formats that are datasets, not models (each is also the name of the dataset kind that reads it).
DATASET_FORMATS = frozenset({"npz", "imagefolder"})
EXTENSIONS: dict[str, str] = {
    ".safetensors": "safetensors",
    ".pt": "state_dict",
    ".pth": "state_dict",
    ".pt2": "export",
    ".onnx": "onnx",
    ".npz": "npz",
    ".zip": "imagefolder",
}
STUDENT_FORMAT = "distillery.student.v1"

_LABELS = {
    "safetensors": "a safetensors file",
    "state_dict": "a PyTorch state dict",
    "export": "a torch.export program",
    "onnx": "an ONNX model",
    "npz": "a NumPy .npz archive",
    "imagefolder": "a .zip of class folders",
}
# Zip bomb limits for image-folder uploads: what the members would expand to, in all and per byte.
_MAX_UNZIPPED_BYTES = 8 * 1024**3
_MAX_ZIP_RATIO = 200
_MAX_ZIP_MEMBERS = 2_000_000
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_SAFETENSORS_HEADER = 100_000_000  # the limit the safetensors library itself enforces
# Common training-script layouts: {"state_dict": ..., "epoch": ..., "optimizer": ...}.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")
# Wrappers that prefix every key: DataParallel/DDP ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Buffers, not parameters: left out of the "params" count, like count_params() does for a model.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
# Names classifier heads go by (torchvision, timm, the CIFAR zoo); see _guess_num_outputs.
_HEAD_NAMES = frozenset({"fc", "head", "heads", "classifier", "last_linear", "logits", "linear"})
# Student metadata keys that hold plain strings; every other value is JSON.
_PLAIN_META = ("format", "architecture")


# --------------------------------------------------------------------------------------------------
# Format detection and inspection (API process: reads files, never builds or runs a model)
# --------------------------------------------------------------------------------------------------


def _accepted() -> str:
    return ", ".join(EXTENSIONS)


def detect_format(filename: str, head: bytes) -> str:
    """The format named by `filename`'s extension, checked against the file's first bytes.

    Pass at least the first 16 bytes as `head`. ONNX has no magic number (a protobuf), so its
    content is checked by inspect_upload only.
    """
    suffix = Path(filename).suffix.lower()
    fmt = EXTENSIONS.get(suffix)
    if fmt is None:
        shown = repr(suffix) if suffix else "no extension"
        raise CheckpointError(f"{filename!r} has {shown}; accepted file types: {_accepted()}")
    if not head:
        raise CheckpointError(f"{filename!r} is empty")
    if fmt == "safetensors":
        size = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
        if len(head) < 9 or not 2 <= size <= _MAX_SAFETENSORS_HEADER or head[8:9] != b"{":
            raise CheckpointError(f"{filename!r} is named .safetensors but does not start with a safetensors "
                                  "header (8-byte length, then JSON)")
    elif fmt in ("state_dict", "export", "npz", "imagefolder") and not head.startswith(_ZIP_MAGIC):
        hint = {
            "state_dict": "save it with torch.save(model.state_dict(), path) (PyTorch 1.6 or later writes "
                          "a zip archive; older raw-pickle files are not accepted)",
            "export": "save it with torch.export.save(torch.export.export(model, (example,)), path)",
            "npz": "save it with numpy.savez or numpy.savez_compressed",
            "imagefolder": "zip the train/ and test/ folders",
        }[fmt]
        raise CheckpointError(f"{filename!r} is named {suffix} but is not a zip archive; {hint}")
    return fmt


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 300:
        first = first[:300] + "…"
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """Turn any failure while reading into a CheckpointError (the API answers those with a 422)."""
    try:
        yield
    except (CheckpointError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as e:  # a corrupt file can fail in any library's own way
        raise CheckpointError(f"could not read {what}: {_short(e)}") from e


def inspect_upload(path: Path, filename: str) -> dict[str, Any]:
    """JSON-ready facts about an uploaded file, read without building or running any model.

    Returns {"format", "num_outputs", "input_shape", "tensors", "params", "metadata"}:
    num_outputs is the class count when known or guessed (see _guess_num_outputs), input_shape the
    full input shape including the batch dimension, with None for dynamic or unknown sizes (None
    when the file does not say, as for state dicts), tensors the number of stored tensors, params
    the number of parameter values (BN running statistics left out). Raises CheckpointError only.
    """
    path = Path(path)
    with _reading(filename):
        with open(path, "rb") as f:
            head = f.read(64)
    fmt = detect_format(filename, head)
    result: dict[str, Any] = {"format": fmt, "num_outputs": None, "input_shape": None, "tensors": None,
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


def _decode_metadata(raw: Mapping[str, str]) -> dict[str, Any]:
    """Our student files JSON-encode their metadata values; other files' strings stay strings."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _PLAIN_META:
            out[key] = value
            continue
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


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


def _pickle_refused(e: Exception, filename: str) -> CheckpointError:
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    what = f" (it holds {found.group(1)})" if found else ""
    return CheckpointError(
        f"{filename!r} holds pickled Python objects{what}, which are never loaded here because unpickling "
        "can run code. If it is a whole model saved with torch.save(model), save model.state_dict() "
        "instead: torch.save(model.state_dict(), 'teacher.pt') and give teacher.architecture; or upload "
        "a torch.export program (.pt2) or an ONNX file")


def _is_tensor_dict(obj: Any) -> bool:
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def _read_state_dict(path: Path, filename: str) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state dict, the container key it was found under or None for a plain one)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _pickle_refused(e, filename) from e
    except RuntimeError as e:
        if "TorchScript" in str(e):
            raise CheckpointError(f"{filename!r} is a TorchScript archive, which is not accepted; upload "
                                  "model.state_dict() saved with torch.save, a .pt2 or an .onnx file") from e
        raise
    if _is_tensor_dict(obj):
        return dict(obj), None
    if isinstance(obj, Mapping):
        for key in _CONTAINER_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return dict(obj[key]), key
    found = (f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping)
             else type(obj).__name__)
    raise CheckpointError(
        f"{filename!r} is not a state dict: expected a dict of tensor names to tensors, or a dict holding "
        f"one under {', '.join(repr(k) for k in _CONTAINER_KEYS)}; found {found}. "
        "Save model.state_dict() with torch.save")


def _inspect_state_dict(path: Path, filename: str) -> dict[str, Any]:
    sd, container = _read_state_dict(path, filename)
    shapes = {k: list(v.shape) for k, v in sd.items()}
    num_outputs, source = _guess_num_outputs(list(sd), shapes)
    meta: dict[str, Any] = {"container": container, "dtypes": sorted({str(v.dtype) for v in sd.values()})}
    if source:
        meta["num_outputs_from"] = source
    return {"num_outputs": num_outputs, "tensors": len(sd), "params": _count_values(shapes), "metadata": meta}


def _dims(shape: Iterable[Any]) -> list[int | None]:
    # Symbolic sizes (SymInt, ONNX dim_param) are not plain ints: report them as unknown.
    return [d if isinstance(d, int) and not isinstance(d, bool) else None for d in shape]


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
    return {
        "input_shape": inputs[0]["shape"] if inputs else None,
        "num_outputs": out_shape[-1] if out_shape else None,
        "tensors": len(graph.initializer),
        # floating-point initializers only: integer ones are shape constants, not weights
        "params": sum(math.prod(t.dims) for t in graph.initializer if t.data_type in float_types),
        "metadata": meta,
    }


def _inspect_npz(path: Path, filename: str) -> dict[str, Any]:
    # Headers only: a dataset may be large and the API process only needs names, shapes and dtypes.
    fmt = np.lib.format
    arrays: dict[str, dict[str, Any]] = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise CheckpointError(f"{filename!r}: member {info.filename!r} is not a .npy array")
            name = info.filename[: -len(".npy")]
            with zf.open(info) as fp:
                version = fmt.read_magic(fp)
                if version == (1, 0):
                    shape, _, dtype = fmt.read_array_header_1_0(fp)
                elif version == (2, 0):
                    shape, _, dtype = fmt.read_array_header_2_0(fp)
                else:  # rare (3.0: unicode field names); read the array itself, pickles still off
                    arr = fmt.read_array(fp, allow_pickle=False)
                    shape, dtype = arr.shape, arr.dtype
            if dtype.hasobject:
                raise CheckpointError(f"{filename!r}: array {name!r} holds Python objects (a pickle), which "
                                      "are not loaded; store plain numeric arrays")
            arrays[name] = {"shape": [int(d) for d in shape], "dtype": str(dtype)}
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


# --------------------------------------------------------------------------------------------------
# .pt2 vetting: torch.export.load is only called on archives that pass these checks
# --------------------------------------------------------------------------------------------------

# Every file torch.export.save writes for one plain program. Refused by omission: AOTInductor and
# ExecuTorch payloads (native code), legacy pickled weights/constants (data/weights/model.pt),
# pickled custom and opaque objects (data/constants/custom_obj_*, opaque_obj_*), other layouts.
_PT2_FILES = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/model\.pt|extra/[A-Za-z0-9_.\-]+")
# Strings outside the free-text fields below must look like names: no quotes, brackets, spaces or
# newlines, so none can break out of the Python source torch.fx generates from the graph.
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.:\-]*")
# Free text that torch only stores, prints as comments, repr()s, or parses as JSON (pytree specs).
_FREE_TEXT_KEYS = frozenset({"stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn", "custom",
                             "in_spec", "out_spec", "torch_version", "as_string", "as_strings"})
# Operators a node may call. Anything torch resolves by getattr from a string could otherwise be any
# attribute reachable from the torch module (torch.os.system, torch.ops.load_library ...).
_OP_PATTERN = re.compile(r"torch\.ops\.(?:aten|prims|higher_order)\.(\w+)(?:\.\w+)?")
_DENIED_OPS = frozenset({"from_file", "save"})  # aten ops that read or write files by name
_SAFE_CALLABLES = frozenset(
    [f"_operator.{n}" for n in ("getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg",
                                "pos", "abs", "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor",
                                "not_", "invert", "lshift", "rshift")]
    + [f"math.{n}" for n in ("ceil", "floor", "trunc", "sqrt")]
    + [f"torch.{n}" for n in ("sym_float", "sym_int", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sqrt",
                              "sym_sum", "_sym_sqrt")])
# Shape expressions (sympy srepr, e.g. "Mul(Integer(2), Symbol('s77', positive=True, integer=True))").
_SYMBOL = re.compile(r"[a-z]{1,5}\d+")
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod", "Eq", "Ne",
    "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality",
    "Unequality", "And", "Or", "Not", "Piecewise", "ExprCondPair", "floor", "ceiling", "sqrt", "oo", "zoo",
    "nan", "true", "false", "Infinity", "NegativeInfinity", "IntInfinity", "NegativeIntInfinity", "int_oo",
    "BooleanTrue", "BooleanFalse",
    # torch.utils._sympy.functions, as torch's deserializer names them
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
    "ToFloat", "Identity",
})
_SYMPY_KEYWORDS = frozenset({"positive", "negative", "nonnegative", "nonzero", "integer", "real", "finite",
                             "commutative", "evaluate"})
# Guards (Python source that ExportedProgram.module() exec's), e.g. "2 <= L['x'].size()[0]".
_GUARD_NAMES = frozenset({"L", "math", "max", "min", "abs", "int", "float", "round", "inf"})
_GUARD_ATTRS = frozenset({"size", "stride", "storage_offset", "dim", "numel",
                          "floor", "ceil", "trunc", "sqrt", "inf"})
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPR_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Tuple,
               ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop)

_PT2_LOCK = threading.Lock()


class _Refused(Exception):
    """Internal: a .pt2 check failed; turned into a CheckpointError naming the file."""


def _check_expression(src: str, *, names: Callable[[str], bool], strings: Callable[[str], bool],
                      attrs: frozenset[str], keywords: frozenset[str], subscripts: bool, what: str) -> None:
    """Allow only arithmetic/comparisons over allow-listed names, calls, attributes and literals.

    Without attribute or subscript access beyond the allow-lists, and with string literals limited to
    plain names, such an expression cannot reach builtins such as __import__ whatever namespace it is
    evaluated in.
    """
    try:
        tree = ast.parse(src, mode="eval")
    except (SyntaxError, ValueError, RecursionError) as e:
        raise _Refused(f"{what} {src[:80]!r} is not an expression") from e
    for node in ast.walk(tree):
        ok = isinstance(node, _EXPR_NODES)
        if isinstance(node, ast.Constant):
            v = node.value
            ok = (v is None or isinstance(v, (bool, int, float))) or (isinstance(v, str) and bool(strings(v)))
        elif isinstance(node, ast.Name):
            ok = names(node.id)
        elif isinstance(node, ast.Call):
            ok = all(kw.arg in keywords for kw in node.keywords)  # func and args are walked too
        elif isinstance(node, ast.keyword):
            ok = True
        elif isinstance(node, ast.Attribute):
            ok = node.attr in attrs
        elif isinstance(node, ast.Subscript):
            ok = subscripts
        if not ok:
            raise _Refused(f"{what} {src[:80]!r} has {type(node).__name__} "
                           f"{ast.unparse(node)[:40]!r}, which is not allowed")


def _check_sym_expr(src: str) -> None:
    _check_expression(src, names=lambda n: n in _SYMPY_NAMES or bool(_SYMBOL.fullmatch(n)),
                      strings=lambda s: bool(_SYMBOL.fullmatch(s)), attrs=frozenset(),
                      keywords=_SYMPY_KEYWORDS, subscripts=False, what="shape expression")


def _check_guard(src: str) -> None:
    _check_expression(src, names=lambda n: n in _GUARD_NAMES, strings=lambda s: bool(_IDENT.fullmatch(s)),
                      attrs=_GUARD_ATTRS, keywords=frozenset(), subscripts=True, what="guard")


def _check_operator(name: str) -> None:
    if name in _SAFE_CALLABLES:
        return
    m = _OP_PATTERN.fullmatch(name)
    if m is None or m.group(1) in _DENIED_OPS:
        raise _Refused(f"the program calls {name!r}; only torch.ops.aten/prims/higher_order operators (and "
                       "symbolic-shape arithmetic) are run")


def _check_program_json(obj: Any, key: str = "", in_meta: bool = False) -> None:
    stack: list[tuple[Any, str, bool]] = [(obj, key, in_meta)]
    while stack:  # iterative: a crafted file could nest deeper than the recursion limit
        o, k, meta = stack.pop()
        if isinstance(o, dict):
            for child_key, v in o.items():
                if not isinstance(child_key, str) or not _NAME_CHARS.fullmatch(child_key):
                    raise _Refused(f"unexpected key {str(child_key)[:60]!r} in the program")
                stack.append((v, child_key, meta or child_key == "metadata"))
        elif isinstance(o, list):
            stack.extend((v, k, meta) for v in o)
        elif isinstance(o, str):
            if "\r" in o or "\x00" in o:
                raise _Refused(f"control characters in {k!r}")
            if k == "expr_str":
                _check_sym_expr(o)
            elif k == "guards_code":
                _check_guard(o)
            elif meta or k in _FREE_TEXT_KEYS:
                continue
            elif k in ("target", "as_operator"):
                _check_operator(o)
            elif not _NAME_CHARS.fullmatch(o):
                raise _Refused(f"unexpected characters in {k!r}: {o[:60]!r}")


def _check_payload_config(raw: str, pattern: str, what: str) -> None:
    config = json.loads(raw).get("config")
    if not isinstance(config, dict):
        raise _Refused(f"malformed {what} config")
    for name, entry in config.items():
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False \
                or not re.fullmatch(pattern, str(entry.get("path_name"))):
            raise _Refused(f"{what} {str(name)[:60]!r} is stored as a pickle or an object, which is not "
                           "loaded; only plain tensors are accepted")


def _check_pt2_archive(data: bytes) -> None:
    """Refuse anything in a .pt2 beyond what torch.export.save writes for a plain program.

    Checks, all before torch.export.load sees the bytes: the archive layout (one root folder, the
    same file list for Python's zipfile and torch's reader, every file on an allow-list); weights
    and constants stored as raw tensors, not pickles; sample inputs that load with weights_only=True
    (torch would retry them with full unpickling); and in the program JSON, every operator on an
    allow-list, every shape expression and guard a plain arithmetic expression (see
    _check_expression), every other non-free-text string name-like.
    """
    from torch.export.pt2_archive import PT2ArchiveReader

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise _Refused("not a torch.export archive (expected one top-level folder)")
    files = {n.split("/", 1)[1] for n in names}
    reader = PT2ArchiveReader(io.BytesIO(data))  # checks archive_format == "pt2"
    if set(reader.get_file_names()) != files:
        raise _Refused("the zip directory is inconsistent")
    odd = sorted(f for f in files if not _PT2_FILES.fullmatch(f))
    if odd:
        raise _Refused(f"it contains {odd[0]!r}; only plain exported programs are accepted (no AOTInductor "
                       "or ExecuTorch binaries, pickled objects or pre-2.7 layouts)")
    for needed in ("models/model.json", "data/weights/model_weights_config.json",
                   "data/constants/model_constants_config.json", "data/sample_inputs/model.pt"):
        if needed not in files:
            raise _Refused(f"{needed} is missing")
    _check_payload_config(reader.read_string("data/weights/model_weights_config.json"), r"weight_\d+",
                          "weight")
    _check_payload_config(reader.read_string("data/constants/model_constants_config.json"), r"tensor_\d+",
                          "constant")
    try:
        torch.load(io.BytesIO(reader.read_bytes("data/sample_inputs/model.pt")), map_location="cpu",
                   weights_only=True)
    except Exception as e:
        raise _Refused("its sample inputs are not plain tensors") from e
    _check_program_json(json.loads(reader.read_string("models/model.json")))


@contextmanager
def _weights_only_forced() -> Iterator[None]:
    # Belt and braces for torch.load calls inside torch.export.load that pass weights_only=False:
    # this variable overrides them. The caller holds _PT2_LOCK so threads do not interleave it.
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def _load_export_program(path: Path, filename: str) -> torch.export.ExportedProgram:
    data = Path(path).read_bytes()  # vet and load the same bytes, not a file that could change between
    try:
        _check_pt2_archive(data)
    except _Refused as e:
        raise CheckpointError(f"{filename!r} was refused: {e}") from e
    with _PT2_LOCK, _weights_only_forced(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.load(io.BytesIO(data))


# --------------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------------


def _onnx_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in the model: initializers, attribute tensors, subgraphs, functions."""
    graphs = [model.graph]
    for info in model.training_info:
        graphs += [info.initialization, info.algorithm]
    node_lists = [list(f.node) for f in model.functions]
    while graphs or node_lists:
        if graphs:
            g = graphs.pop()
            yield from g.initializer
            for sp in g.sparse_initializer:
                yield sp.values
                yield sp.indices
            node_lists.append(list(g.node))
            continue
        for node in node_lists.pop():
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                for sp in [attr.sparse_tensor, *attr.sparse_tensors]:
                    yield sp.values
                    yield sp.indices
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def _parse_onnx(data: bytes, filename: str) -> onnx.ModelProto:
    import onnx

    model = onnx.load_model_from_string(data)
    for t in _onnx_tensors(model):
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data) > 0:
            raise CheckpointError(
                f"{filename!r} keeps its weights in external data files, which are not read (they name paths "
                "on our side); save it as one file: onnx.save(model, path, save_as_external_data=False), or "
                "torch.onnx.export(..., external_data=False)")
    onnx.checker.check_model(model)
    return model


_ORT_INPUT_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
}


def _run_in_fixed_batches(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                          batch: int | None) -> torch.Tensor:
    """Call fn on x, in chunks of `batch` rows (the last zero-padded) when the model fixed its batch."""
    if batch is None or x.shape[0] == batch:
        return fn(x)
    outs = []
    for chunk in x.split(batch):
        n = chunk.shape[0]
        if n < batch:
            chunk = torch.cat([chunk, chunk.new_zeros((batch - n, *chunk.shape[1:]))])
        outs.append(fn(chunk)[:n])
    return torch.cat(outs)


class OnnxModule(nn.Module):
    """An onnxruntime session as an eval-only teacher: forward(x) -> float32 logits on x's device.

    It has no parameters and no gradient (the graph is opaque), so it suits logit-only methods. A
    model exported with a fixed batch size is run in chunks of that size.
    """

    def __init__(self, session: onnxruntime.InferenceSession):
        super().__init__()
        self.session = session
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise CheckpointError(f"an ONNX teacher must take exactly one input (the image batch); this one "
                                  f"takes {len(inputs)}: {[i.name for i in inputs]}")
        self.input_name = inputs[0].name
        self.output_name = session.get_outputs()[0].name
        dtype = _ORT_INPUT_TYPES.get(inputs[0].type)
        if dtype is None:
            raise CheckpointError(f"the ONNX model's input is {inputs[0].type}; a floating-point image batch "
                                  "(float32, float16 or double) is expected")
        self.input_dtype = dtype
        first = inputs[0].shape[0] if inputs[0].shape else None
        self.fixed_batch: int | None = first if isinstance(first, int) and first > 0 else None

    @classmethod
    def from_file(cls, path: Path, *, device: torch.device | str = "cpu") -> OnnxModule:
        """Build from a file, on CUDA when `device` is a CUDA device and onnxruntime can use one."""
        import onnxruntime as ort

        path, device = Path(path), torch.device(device)
        data = path.read_bytes()
        _parse_onnx(data, path.name)
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers etc. mean nothing to users
        # From bytes: the session has no model directory to resolve any relative path against.
        return cls(ort.InferenceSession(data, sess_options=options, providers=providers))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy().astype(self.input_dtype,
                                                                                        copy=False))
        out = self.session.run([self.output_name], {self.input_name: arr})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def feature_root(self) -> nn.Module:
        raise FeatureError("an ONNX teacher gives its logits only; feature methods need a .pt2 or a state dict")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_in_fixed_batches(self._run, x, self.fixed_batch).to(x.device)


class _ExportedModule(nn.Module):
    """Holds ExportedProgram.module(): train()/eval() only set the flag, since the exported graph
    module refuses them (the graph was captured in one mode); fixed batch sizes are handled too.

    Feature methods hook layers by module path; the flat graph module has none to hook, so
    `feature_root` rebuilds the module tree with `torch.export.unflatten` and runs through it from then on.
    """

    def __init__(self, program: nn.Module, fixed_batch: int | None,
                 exported: torch.export.ExportedProgram | None = None):
        super().__init__()
        self.program = program
        self.fixed_batch = fixed_batch
        self._exported = exported
        self.tree: nn.Module | None = None

    def feature_root(self) -> nn.Module:
        if self.tree is None:
            if self._exported is None:
                raise FeatureError("this exported teacher keeps no module tree to take features from")
            if self.fixed_batch is not None:
                # hooks would see only the last fixed-size chunk of a batch
                raise FeatureError(f"this .pt2 teacher was exported with a fixed batch of {self.fixed_batch}; "
                                   "export it with a dynamic batch dimension to take features from it")
            self.tree = torch.export.unflatten(self._exported)
            for p in self.tree.parameters():
                p.requires_grad_(False)
        return self.tree

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run_in_fixed_batches(self.tree if self.tree is not None else self.program, x, self.fixed_batch)

    def train(self, mode: bool = True) -> _ExportedModule:
        self.training = mode
        return self


# --------------------------------------------------------------------------------------------------
# Building teachers and students (worker process)
# --------------------------------------------------------------------------------------------------


def _few(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (f", … ({len(keys)} in all)" if len(keys) > n else "")


def _strip_wrapper_prefixes(sd: dict[str, torch.Tensor],
                            model_keys: Iterable[str]) -> dict[str, torch.Tensor]:
    keys = list(model_keys)
    for prefix in _WRAPPER_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd) and not all(k.startswith(prefix) for k in keys):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _load_weights(model: nn.Module, sd: dict[str, torch.Tensor], filename: str, arch: str) -> None:
    """load_state_dict(strict=True), with an error that names the keys that do not fit."""
    expected = model.state_dict()
    sd = _strip_wrapper_prefixes(sd, expected)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [f"{k} (file {tuple(sd[k].shape)}, model {tuple(v.shape)})"
                  for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_few(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} of another shape: {_few(mismatched)}")
    if problems:
        raise CheckpointError(f"the weights in {filename!r} do not fit architecture {arch!r} as configured "
                              f"({'; '.join(problems)}); check the architecture name and its kwargs")
    model.load_state_dict(sd, strict=True)


def _create(arch: str, kwargs: Mapping[str, Any], num_classes: int, in_channels: int,
            input_size: tuple[int, int]) -> nn.Module:
    from kdcore.models import create_model, validate_model_kwargs  # here: keeps imports one-way and light

    try:
        # validation drops kwargs that merely repeat the dataset's class count or channels
        clean = validate_model_kwargs(arch, dict(kwargs), num_classes=num_classes, in_channels=in_channels)
        return create_model(arch, num_classes=num_classes, in_channels=in_channels,
                            input_size=(int(input_size[0]), int(input_size[1])), **clean)
    except (KeyError, ValueError, TypeError) as e:  # unknown name, invalid kwargs
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise CheckpointError(f"cannot build architecture {arch!r}: {msg}") from e


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with safe_open(str(path), framework="pt", device="cpu") as f:
        raw = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = _decode_metadata(raw)
    aliases = meta.get("aliases")
    if isinstance(aliases, dict):  # tied weights were saved once; give each name its tensor back
        for name, target in aliases.items():
            if target in tensors:
                tensors[name] = tensors[target]
    return tensors, meta


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def load_teacher(path: Path, fmt: str, *, architecture: str | None, kwargs: dict[str, Any], num_classes: int,
                 in_channels: int, input_size: tuple[int, int], device: torch.device) -> nn.Module:
    """Build a teacher from an uploaded file (or an earlier job's student file), ready to run.

    safetensors/state_dict: create_model(architecture, ...) then a strict load; a student file from
    save_student supplies architecture and kwargs itself (given kwargs override its own). export:
    the program's module. onnx: an OnnxModule. Returned in eval mode, no parameter requiring grad.
    """
    path, device = Path(path), torch.device(device)
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt == "npz":
        raise CheckpointError(f"{path.name!r} is a dataset (.npz), not a teacher checkpoint")
    with _reading(f"teacher checkpoint {path.name!r}"):
        if fmt in ("safetensors", "state_dict"):
            module = _teacher_from_weights(path, fmt, architecture, kwargs, num_classes, in_channels,
                                           input_size)
        elif fmt == "export":
            from torch.export.passes import move_to_device_pass

            # The pass also moves constants the program made in forward() (plain tensor attributes that
            # Module.to() would leave behind) and the device arguments recorded in the graph.
            ep = move_to_device_pass(_load_export_program(path, path.name), device)
            module = _ExportedModule(ep.module(), _program_batch(ep), ep)
        else:
            module = OnnxModule.from_file(path, device=device)
    return _freeze(module.to(device))


def _program_batch(ep: torch.export.ExportedProgram) -> int | None:
    """The program's fixed batch size, or None when its batch dimension is dynamic."""
    sig = ep.graph_signature
    if len(sig.user_inputs) != 1:
        raise CheckpointError("an exported teacher must take exactly one input (the image batch); this one "
                              f"takes {len(sig.user_inputs)}")
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == sig.user_inputs[0])
    val = node.meta.get("val")
    return _dims(val.shape)[0] if isinstance(val, torch.Tensor) and val.dim() >= 1 else None


def _teacher_from_weights(path: Path, fmt: str, architecture: str | None, kwargs: Mapping[str, Any],
                          num_classes: int, in_channels: int, input_size: tuple[int, int]) -> nn.Module:
    if fmt == "safetensors":
        sd, meta = _read_safetensors(path)
    else:
        sd, meta = _read_state_dict(path, path.name)[0], {}
    arch, kw = architecture, dict(kwargs or {})
    saved_arch = meta.get("architecture")
    if isinstance(saved_arch, str) and (arch is None or arch == saved_arch):
        saved_kw = meta.get("kwargs")
        arch, kw = saved_arch, {**(saved_kw if isinstance(saved_kw, dict) else {}), **kw}
    for key, want in (("num_classes", num_classes), ("in_channels", in_channels)):
        have = meta.get(key)
        if isinstance(have, int) and have != want:
            raise CheckpointError(f"{path.name!r} was made for {key}={have}, but the dataset has {want}")
    if arch is None:
        raise CheckpointError(f"{path.name!r} holds weights only: give teacher.architecture (a registry "
                              "name) and the kwargs it was built with")
    model = _create(arch, kw, num_classes, in_channels, input_size)
    _load_weights(model, sd, path.name, arch)
    return model


def _tensors_for_saving(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Contiguous CPU tensors for safetensors, which refuses tensors that share memory.

    Names that are the same view of the same storage (tied weights) are saved once and recorded as
    aliases; other views of an already saved storage are copied.
    """
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple[Any, ...], str] = {}
    storages: set[tuple[Any, ...]] = set()
    for name, t in sd.items():
        t = t.detach()
        if t.numel() == 0:
            out[name] = t.to("cpu").clone()
            continue
        storage = (str(t.device), t.untyped_storage().data_ptr())
        view = (*storage, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if view in views:
            aliases[name] = views[view]
            continue
        views[view] = name
        c = t.to("cpu").contiguous()
        out[name] = c.clone() if storage in storages else c
        storages.add(storage)
    return out, aliases


def save_student(model: nn.Module, path: Path, *, architecture: str, kwargs: dict[str, Any],
                 dataset: DatasetInfo, extra: dict[str, Any] | None = None) -> int:
    """Write the student's weights as safetensors with what rebuilding it takes; returns the file size.

    Metadata (strings, as safetensors requires): format, architecture, then JSON: kwargs,
    num_classes, in_channels, input_size, input_format (dataset.describe()), class_names, aliases
    (tied weights, when any) and each `extra` entry.
    """
    path = Path(path)
    tensors, aliases = _tensors_for_saving(model.state_dict())
    meta = {
        "format": STUDENT_FORMAT,
        "architecture": architecture,
        "kwargs": json.dumps(dict(kwargs), sort_keys=True, default=str),
        "num_classes": json.dumps(int(dataset.num_classes)),
        "in_channels": json.dumps(int(dataset.in_channels)),
        "input_size": json.dumps([int(d) for d in dataset.image_size]),
        "input_format": json.dumps(dataset.describe(), default=str),
        "class_names": json.dumps(list(dataset.class_names)),
    }
    if aliases:
        meta["aliases"] = json.dumps(aliases)
    for key, value in (extra or {}).items():
        if key in meta or key == "aliases":
            raise ValueError(f"extra metadata key {key!r} is reserved")
        meta[key] = json.dumps(value, default=str)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)  # readers never see a half-written file
    return path.stat().st_size


def load_student(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a student written by save_student: (model in eval mode on `device`, decoded metadata)."""
    path = Path(path)
    with _reading(f"student file {path.name!r}"):
        tensors, meta = _read_safetensors(path)
    if meta.get("format") != STUDENT_FORMAT:
        raise CheckpointError(f"{path.name!r} is not a Distillery student file (format "
                              f"{meta.get('format')!r}, expected {STUDENT_FORMAT!r})")
    try:
        arch = str(meta["architecture"])
        size = meta["input_size"]
        num_classes, in_channels = int(meta["num_classes"]), int(meta["in_channels"])
        kwargs = meta.get("kwargs") or {}
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path.name!r} has incomplete student metadata: {_short(e)}") from e
    model = _create(arch, kwargs, num_classes, in_channels, (size[0], size[1]))
    _load_weights(model, tensors, path.name, arch)
    return model.to(device).eval(), meta


# --------------------------------------------------------------------------------------------------
# Writing teachers in the formats we accept (for users and tests)
# --------------------------------------------------------------------------------------------------


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
