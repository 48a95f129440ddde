"""Readers shared by inspection (API process) and building (worker): tensors and metadata out of uploaded
files without running code, and failures turned into CheckpointError.

- state dicts (.pt/.pth) are read only with ``torch.load(..., weights_only=True)``; a refused pickle gets
  advice on what to upload instead;
- safetensors files are plain tensors plus a JSON header (our student files JSON-encode its values);
- ONNX models are parsed with every tensor checked: weights kept in external files are refused, since they
  would make the runtime open paths the uploader chose.

See `kdcore.checkpoints.pt2_vetting` for the security rule all of this follows.
"""
from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

from kdcore.errors import CheckpointError

if TYPE_CHECKING:  # kept out of the import so that the API process pays for it only when used
    import onnx

# Common training-script layouts: {"state_dict": ..., "epoch": ..., "optimizer": ...}.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")
# Student metadata keys that hold plain strings; every other value is JSON.
_PLAIN_META = ("format", "architecture")


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


def _dims(shape: Iterable[Any]) -> list[int | None]:
    # Symbolic sizes (SymInt, ONNX dim_param) are not plain ints: report them as unknown.
    return [d if isinstance(d, int) and not isinstance(d, bool) else None for d in shape]


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
