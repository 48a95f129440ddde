"""What input a program exported elsewhere accepts: its batch limits (static, bounded or dynamic), the
per-sample shape it fixed and its input dtype, read from the program without running it.

The API records this in an upload's `meta["input"]` (`InputConstraints.to_meta`), where the submit-time
check reads what the teacher expects; the worker reads the same facts from the loaded program and runs
it in chunks that fit (`kdcore.batching.run_in_chunks`). One reader per format, shared by both sides.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kdcore.batching import Limits
from kdcore.errors import CheckpointError

STATIC, BOUNDED, DYNAMIC = "static", "bounded", "dynamic"


@dataclass(frozen=True)
class InputConstraints:
    """batch: static (batch_min == batch_max), bounded (both set) or dynamic (no batch_max);
    shape: the per-sample dims (C, H, W), None where the program left one dynamic; dtype: e.g. float32."""

    batch: str
    batch_min: int
    batch_max: int | None
    shape: list[int | None] | None
    dtype: str | None

    @property
    def limits(self) -> Limits:
        return (self.batch_min, self.batch_max)

    def to_meta(self) -> dict[str, Any]:
        return {"batch": self.batch, "batch_min": self.batch_min, "batch_max": self.batch_max,
                "shape": self.shape, "dtype": self.dtype}


def _batch(lo: int, hi: int | None) -> tuple[str, int, int | None]:
    lo = max(1, lo)  # a range from 0 still needs a row to run on
    if hi is None:
        return DYNAMIC, lo, None
    return (STATIC if hi == lo else BOUNDED), lo, hi


def program_input(ep: torch.export.ExportedProgram) -> InputConstraints:
    """A torch.export program's one input. A batch exported with `Dim("batch", min=a, max=b)` is bounded
    [a, b]; `Dim("batch")` or `Dim.AUTO` dynamic; no dynamic_shapes static at the example's size."""
    import sympy

    sig = ep.graph_signature
    if len(sig.user_inputs) != 1:
        raise CheckpointError("an exported teacher must take exactly one input (the image batch); this one "
                              f"takes {len(sig.user_inputs)}")
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == sig.user_inputs[0])
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() < 1:
        return InputConstraints(DYNAMIC, 1, None, None, None)
    dims = list(val.shape)
    first = dims[0]
    if isinstance(first, int):
        kind, lo, hi = _batch(first, first)
    else:
        vr = ep.range_constraints.get(first.node.expr) if isinstance(first, torch.SymInt) else None
        low = int(vr.lower) if vr is not None and isinstance(vr.lower, sympy.Integer) else 1
        up = int(vr.upper) if vr is not None and isinstance(vr.upper, sympy.Integer) else None
        kind, lo, hi = _batch(low, up)
    shape = [d if isinstance(d, int) else None for d in dims[1:]]
    return InputConstraints(kind, lo, hi, shape, str(val.dtype).removeprefix("torch."))


def onnx_input(shape: list[Any] | None, dtype: str | None) -> InputConstraints:
    """An ONNX graph's first input: a batch dimension given as a number is static, a name (dim_param) or
    nothing is dynamic. ONNX has no bounded dimensions. `shape` holds ints, names or None."""
    if not shape:
        return InputConstraints(DYNAMIC, 1, None, None, dtype)
    first = shape[0]
    fixed = first if isinstance(first, int) and not isinstance(first, bool) and first > 0 else None
    kind, lo, hi = _batch(fixed or 1, fixed)
    rest = [d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None for d in shape[1:]]
    return InputConstraints(kind, lo, hi, rest, dtype)
