"""kdcore.checkpoints.pt2_vetting: a tampered .pt2 is refused before torch.export.load runs anything."""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kdcore.checkpoints import CheckpointError, inspect_upload
from tests.kdcore.checkpoints.conftest import OpenOnUnpickle, load_toy_teacher


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
    entries[f"{root}/data/weights/{entry['path_name']}"] = _pickled(OpenOnUnpickle(marker))
    entries[key] = json.dumps(config).encode()


PT2_ATTACKS: dict[str, Callable[[dict[str, bytes], str, Path], None]] = {
    # torch.load(weights_only=True) fails on these, then torch retries with weights_only=False
    "sample-inputs-pickle": lambda e, r, m: e.__setitem__(f"{r}/data/sample_inputs/model.pt",
                                                          _pickled(OpenOnUnpickle(m))),
    "weights-use-pickle": _use_pickle,
    "opaque-constant": lambda e, r, m: e.__setitem__(f"{r}/data/constants/opaque_obj_0",
                                                     pickle.dumps(OpenOnUnpickle(m))),
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
        load_toy_teacher(path, "export", architecture=None, kwargs={})
    assert not marker.exists()


def test_rewritten_but_untampered_pt2_still_loads(files: dict, tmp_path: Path) -> None:
    # guards the test above: our zip rewriting alone does not make torch refuse the file
    path = tmp_path / "same.pt2"
    _rewrite_pt2(files["dir"] / "program.pt2", path, lambda e, r: None)
    assert inspect_upload(path, path.name)["num_outputs"] == 10
