"""Building teachers from files (worker process): `load_teacher`, and the registry-architecture helpers
that `kdcore.checkpoints.students` shares (`_create`, `_load_weights`: a strict load whose error names the
keys that do not fit).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.checkpoints.constraints import program_input
from kdcore.checkpoints.formats import FORMATS
from kdcore.checkpoints.pt2_vetting import _load_export_program
from kdcore.checkpoints.reading import _read_safetensors, _read_state_dict, _reading
from kdcore.checkpoints.runtimes import OnnxModule, _ExportedModule
from kdcore.errors import CheckpointError

# Wrappers that prefix every key: DataParallel/DDP ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


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
            module = _ExportedModule(ep.module(), program_input(ep), ep)
        else:
            module = OnnxModule.from_file(path, device=device)
    return _freeze(module.to(device))



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
