"""The optimizer and learning-rate schedule a job's `training` section asks for, and its step count."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from kdcore.spec import TrainingSpec


def steps_per_epoch(n: int, batch_size: int) -> int:
    bs = min(batch_size, n)
    # A final batch of one sample breaks batch norm in training mode; that lone sample is dropped instead.
    return n // bs + (1 if n % bs > 1 else 0)


def lr_lambda(kind: str, total_steps: int, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """The LR multiplier per step: cosine to 0 over the run, step (x0.1 at 50 % and 75 %), or constant."""
    if kind == "cosine":
        return lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / max(1, total_steps)))
    if kind == "step":
        marks = [int(epochs * 0.5) * steps_per_epoch, int(epochs * 0.75) * steps_per_epoch]
        return lambda s: 0.1 ** sum(s >= m for m in marks if m > 0)
    return lambda s: 1.0


def build_optimizer(t: TrainingSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    # fused: one kernel for all parameters instead of several small ops per parameter (CPU and CUDA)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                               nesterov=t.momentum > 0, fused=fused or None)
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=t.lr, weight_decay=t.weight_decay, fused=fused or None)


def build_scheduler(t: TrainingSpec, opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step LR schedule over `steps` steps per epoch for t.epochs epochs."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(t.lr_schedule, steps * t.epochs, steps, t.epochs))
