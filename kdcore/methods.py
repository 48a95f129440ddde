"""Distillation methods behind one interface, in the style of mdistiller's `Distiller`.

A method owns the student and its frozen teachers and answers `forward_train(x, y, epoch)` with the
student's logits and a dict of named, already weighted loss terms; the training loop sums them.
New methods (FitNets, AT, DKD, …) register here and the loop does not change.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from kdcore.losses import kd_loss
from kdcore.registry import Registry

METHODS: Registry[Callable[..., Distiller]] = Registry("method")


def register_method(name: str, *, description: str, paper: str = "", needs_teacher: bool = True,
                    logits_only: bool = True, multi_teacher: bool = False,
                    params: type[BaseModel] | None = None) -> Callable[[type[Distiller]], type[Distiller]]:
    """`logits_only` methods work with any teacher, ONNX ones included (they need no features)."""
    return METHODS.register(name, description=description, paper=paper, needs_teacher=needs_teacher,
                            logits_only=logits_only, multi_teacher=multi_teacher, params=params)


def _eval(module: nn.Module) -> None:
    # torch.export programs are already traced in eval mode and some refuse .eval(); that is fine.
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):
        pass


class Distiller(nn.Module):
    """Student plus frozen teachers. Only the student's (and a method's own) parameters train."""

    def __init__(self, student: nn.Module, teachers: list[nn.Module], temperature: float, alpha: float,
                 params: dict[str, Any]):
        super().__init__()
        self.student = student
        # A plain list keeps teachers out of .parameters(), .train() and state_dict(): they are never
        # optimized or checkpointed with the student.
        self.teachers = list(teachers)
        for t in self.teachers:
            _eval(t)
            for p in t.parameters():
                p.requires_grad_(False)
        self.temperature, self.alpha, self.params = temperature, alpha, params

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        for t in self.teachers:  # teachers stay in eval mode (batch norm statistics, dropout)
            _eval(t)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the teachers' logits (one teacher: its logits)."""
        outs = [t(x) for t in self.teachers]
        return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


@register_method("none", description="Plain supervised training on the labels (no teacher): makes a teacher "
                 "or a baseline with the service itself.", needs_teacher=False)
class Supervised(Distiller):
    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(x)
        return logits, {"ce": F.cross_entropy(logits.float(), y)}


@register_method("kd", description="Soft targets with temperature: alpha * T^2 * KL(p_t || p_s) + "
                 "(1 - alpha) * CE(z_s, y).", paper="Hinton, Vinyals, Dean 2015, Distilling the Knowledge "
                 "in a Neural Network, arXiv:1503.02531")
class KD(Distiller):
    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: int
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z_t = self.teacher_logits(x)
        z_s = self.student(x)
        return z_s, kd_loss(z_s, z_t, y, self.temperature, self.alpha)


def method_catalog() -> list[dict[str, Any]]:
    out = []
    for e in METHODS:
        params = e.meta.get("params")
        out.append({
            "name": e.name, "description": e.meta["description"], "paper": e.meta["paper"],
            "needs_teacher": e.meta["needs_teacher"], "logits_only": e.meta["logits_only"],
            "multi_teacher": e.meta["multi_teacher"],
            "params": params.model_json_schema() if params else {"type": "object", "properties": {}},
            "common": {"temperature": "T > 0, default 4", "alpha": "weight of the soft term in [0, 1], default 0.9"},
        })
    return out
