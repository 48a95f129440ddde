"""Running a model whose batch dimension is limited: programs exported elsewhere often fix their batch
(a static 1 or 32) or bound it (`Dim("batch", min=1, max=4096)`), and every caller (the teacher-output
cache, the per-step teacher, evaluation, feature hooks) hands them batches of its own size.

A module states its limits as `batch_limits = (lo, hi)` (hi None: no upper bound); `run_in_chunks`
calls it in pieces of at most `hi` rows, zero-padding a piece below `lo` (the last one, for a static
batch) and dropping the padded rows from the output. Nothing here imports beyond torch, so the methods
(feature hooks) and the runtimes share it.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

Limits = tuple[int, int | None]
UNLIMITED: Limits = (1, None)


def batch_limits(module: object) -> Limits:
    """The module's (lo, hi) batch limits; (1, None) for a module that states none."""
    limits = getattr(module, "batch_limits", None)
    return limits if limits is not None else UNLIMITED


def chunk_size(limits: Limits, n: int) -> int:
    """How many rows to hand the module at a time for n rows: all of them when they fit, else hi."""
    hi = limits[1]
    return n if hi is None or n <= hi else hi


def pad_rows(x: torch.Tensor, lo: int) -> torch.Tensor:
    """x with zero rows appended up to lo rows (unchanged when it has that many)."""
    n = x.shape[0]
    return x if n >= lo else torch.cat([x, x.new_zeros((lo - n, *x.shape[1:]))])


def run_in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, limits: Limits) -> torch.Tensor:
    """fn over all rows of x, in pieces that fit the limits; the output has exactly x's rows."""
    lo, hi = limits
    n = x.shape[0]
    if n >= lo and (hi is None or n <= hi):
        return fn(x)
    outs = []
    for chunk in x.split(chunk_size(limits, n)):
        outs.append(fn(pad_rows(chunk, lo))[:chunk.shape[0]])
    return torch.cat(outs)
