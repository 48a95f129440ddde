"""Vetting .pt2 archives before torch.export.load sees them, and the weights-only guard around that load.

Security rule: nothing a user uploads may run code on our side.

- `.pt/.pth` state dicts are read only with ``torch.load(..., weights_only=True)``, which refuses
  pickled classes and functions (a whole ``nn.Module``, a ``__reduce__`` payload); see
  `kdcore.checkpoints.reading`.
- `.safetensors` files are plain tensors plus a JSON header; `.npz` files are read with pickles off.
- `.onnx` models are parsed by ``onnx`` and run by onnxruntime; weights kept in external files are
  refused (they would make the runtime open paths the uploader chose).
- `.pt2` programs go through ``torch.export.load``, which its own docs call unsafe for untrusted
  files: in torch 2.14 it unpickles payloads marked ``use_pickle`` (and retries its sample inputs
  with ``weights_only=False``), loads AOTInductor shared libraries, feeds shape expressions to
  ``sympy.sympify`` (an ``eval``) and ``exec``s the program's guard strings in ``.module()``.
  `_check_pt2_archive` (this module) therefore accepts only what ``torch.export.save`` writes for a plain
  program and checks every string that reaches one of those sinks before torch sees the file; see there.
  `_load_export_program` is the only way into ``torch.export.load``: it vets the bytes, then loads those
  same bytes with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` set.
"""
from __future__ import annotations

import ast
import io
import json
import os
import re
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from kdcore.errors import CheckpointError

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
