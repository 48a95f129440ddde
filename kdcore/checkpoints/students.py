"""Student files: `save_student` writes a student's weights as safetensors with what rebuilding it takes
(architecture, kwargs, dataset facts), `load_student` rebuilds it. A student file is also accepted as a
teacher upload (`load_teacher` reads its metadata).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from torch import nn

from kdcore.checkpoints.building import _create, _load_weights
from kdcore.checkpoints.reading import _read_safetensors, _reading, _short
from kdcore.errors import CheckpointError

if TYPE_CHECKING:
    from kdcore.datasets.base import DatasetInfo

STUDENT_FORMAT = "distillery.student.v1"


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
