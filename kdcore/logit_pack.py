"""How the teacher-output cache holds the train split's logits within its byte budget.

The first format that fits the bytes left after the features, in this order:

  fp32        the logits as computed: K teachers x N samples x C classes x 4 bytes. Exact.
  bf16        the same in bfloat16: 2 bytes each, 3 significant digits (relative error <= 2^-8).
  top-k       for many classes (C >= TOPK_MIN_CLASSES): per teacher and sample, the k largest logits
              (bfloat16), their class indices (int16, or int32 past 32,767 classes) and the log of the
              probability mass of the other C - k classes at T = 1 (float32): K x N x (4k + 4) bytes with
              int16 indices. k is the largest that fits, at most C - 1; below TOPK_MIN (20) it is not taken.
  (none)      the teacher runs at every step; the report says `off (logits too large)`.

Top-k is read back as full logits: the k kept values in their places and every other class at one fill
value chosen so that, at T = 1, the other classes together hold exactly the stored mass
(fill = log m - log(1 - m) + logsumexp(top-k) - log(C - k)). At T = 1 the distribution is then the
teacher's with its tail flattened; at other temperatures the tail's share shifts a little, since it is
flat rather than spread as the teacher spread it. benchmarks/teacher_cache_topk.py measures what that costs a
student (docs/benchmarks.md, "Teacher cache: top-k logits").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Fewer kept logits than this: the teacher runs per step instead (exact, only slower). Measured on 100 classes
# (benchmarks/teacher_cache_topk.py, docs/benchmarks.md): at T = 4, k = 20 cost the student 1.0 point of
# top-1 (within the seeds' spread of 1.9), k = 10 cost 2.7 and k = 5 4.6; at T = 2 no k from 1 up moved it
# beyond the spread.
TOPK_MIN = 20
TOPK_MIN_CLASSES = 50  # "many classes": below this, bf16 (2C bytes) is close to top-TOPK_MIN's 4k + 4 anyway
_MIN_LOG_MASS = -80.0  # a tail whose mass underflows still gets a finite fill (exp(-80) ~ 2e-35)


@dataclass(frozen=True)
class LogitsFormat:
    """One way of holding the logits: `fp32`, `bf16`, or `top-k` with its k."""

    kind: str
    k: int = 0

    @property
    def name(self) -> str:
        return f"top-{self.k}" if self.kind == "topk" else self.kind

    def bytes_per_row(self, classes: int) -> int:
        """Bytes per teacher and sample."""
        if self.kind == "fp32":
            return 4 * classes
        if self.kind == "bf16":
            return 2 * classes
        return self.k * (2 + _index_dtype(classes).itemsize) + 4

    def describe(self, classes: int) -> str:
        """What the report says: `fp32 logits`, `bf16 logits`, `top-20 of 100 logits + rest mass`."""
        if self.kind == "topk":
            return f"top-{self.k} of {classes} logits + rest mass"
        return f"{self.kind} logits"


FP32, BF16 = LogitsFormat("fp32"), LogitsFormat("bf16")


def _index_dtype(classes: int) -> torch.dtype:
    return torch.int16 if classes <= torch.iinfo(torch.int16).max else torch.int32


def choose_format(rows: int, classes: int, room: int, topk_allowed: bool = True) -> LogitsFormat | None:
    """The first format whose `rows` (teachers x samples) logit rows of `classes` fit in `room` bytes:
    fp32, bf16, then top-k with the largest k that fits (for C >= TOPK_MIN_CLASSES, k >= TOPK_MIN); None
    when none does."""
    for fmt in (FP32, BF16):
        if rows * fmt.bytes_per_row(classes) <= room:
            return fmt
    if not topk_allowed or classes < TOPK_MIN_CLASSES or rows <= 0:
        return None
    per_k = 2 + _index_dtype(classes).itemsize
    k = min(classes - 1, (room // rows - 4) // per_k)
    return LogitsFormat("topk", int(k)) if k >= TOPK_MIN else None


class LogitPack:
    """The train split's logits [K, N, C] held in a format: filled chunk by chunk (`put`), read back
    batch by batch as float32 logits (`rows`)."""

    def __init__(self, fmt: LogitsFormat, tensors: dict[str, torch.Tensor], classes: int):
        self.fmt, self.tensors, self.classes = fmt, tensors, classes

    @classmethod
    def empty(cls, fmt: LogitsFormat, teachers: int, n: int, classes: int, device: torch.device) -> LogitPack:
        shape = (teachers, n)
        if fmt.kind == "fp32":
            tensors = {"logits": torch.empty((*shape, classes), dtype=torch.float32, device=device)}
        elif fmt.kind == "bf16":
            tensors = {"logits": torch.empty((*shape, classes), dtype=torch.bfloat16, device=device)}
        else:
            tensors = {"topk_values": torch.empty((*shape, fmt.k), dtype=torch.bfloat16, device=device),
                       "topk_indices": torch.empty((*shape, fmt.k), dtype=_index_dtype(classes), device=device),
                       "rest_log_mass": torch.empty(shape, dtype=torch.float32, device=device)}
        return cls(fmt, tensors, classes)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def __len__(self) -> int:
        return int(next(iter(self.tensors.values())).shape[1])

    def put(self, start: int, logits: torch.Tensor) -> None:
        """Stores logits [K, b, C] as samples start .. start + b."""
        end = start + logits.shape[1]
        if self.fmt.kind != "topk":
            self.tensors["logits"][:, start:end] = logits
            return
        z = logits.float()
        values, idx = z.topk(self.fmt.k, dim=-1)
        rest = z.scatter(-1, idx, float("-inf")).logsumexp(-1) - z.logsumexp(-1)  # log of the others' mass
        self.tensors["topk_values"][:, start:end] = values
        self.tensors["topk_indices"][:, start:end] = idx
        self.tensors["rest_log_mass"][:, start:end] = rest.clamp(min=_MIN_LOG_MASS)

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """float32 logits [K, B, C] of the samples at idx."""
        if self.fmt.kind != "topk":
            return self.tensors["logits"][:, idx].float()
        values = self.tensors["topk_values"][:, idx].float()
        log_m = self.tensors["rest_log_mass"][:, idx].clamp(min=_MIN_LOG_MASS, max=-1e-6)
        # the others' share at T = 1 is m = exp(log_m); each of the C - k others gets e^fill, where
        # (C - k) e^fill / (sum_topk e^v + (C - k) e^fill) = m
        fill = log_m - torch.log(-torch.expm1(log_m)) + values.logsumexp(-1) - math.log(self.classes - self.fmt.k)
        out = fill.unsqueeze(-1).expand(*fill.shape, self.classes).clone()
        return out.scatter_(-1, self.tensors["topk_indices"][:, idx].long(), values)

    def to(self, device: torch.device) -> LogitPack:
        return LogitPack(self.fmt, {k: v.to(device) for k, v in self.tensors.items()}, self.classes)

    @classmethod
    def from_tensors(cls, fmt: LogitsFormat, tensors: dict[str, torch.Tensor], classes: int) -> LogitPack | None:
        """A pack read back from a cache entry; None when its tensors do not match the format."""
        need = {"fp32": {"logits"}, "bf16": {"logits"}}.get(fmt.kind, {"topk_values", "topk_indices", "rest_log_mass"})
        if set(tensors) != need:
            return None
        return cls(fmt, tensors, classes)


def parse_format(name: str) -> LogitsFormat | None:
    """`fp32`, `bf16` or `top-<k>` (as `LogitsFormat.name` writes it) back to a format; None otherwise."""
    if name in ("fp32", "bf16"):
        return LogitsFormat(name)
    if name.startswith("top-") and name[4:].isdigit():
        return LogitsFormat("topk", int(name[4:]))
    return None
