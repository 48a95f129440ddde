"""`dml`: deep mutual learning (Zhang et al. 2018), two students and no fixed teacher.

The peer is DML's own business: it is built here from params (peer_architecture, peer_kwargs; by default
the student's own) with the job's `ModelFactory`, trained beside the student, and handed back to the loop
through `extra_students()`, which saves it as peer.safetensors and reports it as report["peer"].
"""
from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from kdcore.errors import UnknownNameError
from kdcore.losses import hard_loss, soft_kl_logp, teacher_log_probs
from kdcore.methods.base import Distiller, ExtraStudent, ModelFactory, TeacherOutput, Terms, register_method
from kdcore.models import MODELS


def mutual_loss(z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float,
                soft_scale: float = 1.0) -> Terms:
    """Each network's (1 - alpha) * CE plus alpha * soft_scale * T^2 * KL from the other's current
    predictions, which are held fixed for this step (detached)."""
    w = alpha * soft_scale
    lp1 = teacher_log_probs(z1.detach(), temperature)
    lp2 = teacher_log_probs(z2.detach(), temperature)
    return {"hard": hard_loss(z1, y, alpha), "soft": w * soft_kl_logp(z1, lp2, temperature),
            "peer_hard": hard_loss(z2, y, alpha), "peer_soft": w * soft_kl_logp(z2, lp1, temperature)}


class DMLParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    peer_architecture: str | None = Field(None, description="registry name of the second student; default: "
                                          "the same as the student")
    peer_kwargs: dict[str, Any] | None = Field(None, description="its kwargs; default: the student's")

    @field_validator("peer_architecture")
    @classmethod
    def _known_architecture(cls, v: str | None) -> str | None:
        if v is not None and v not in MODELS:
            raise ValueError(str(UnknownNameError("architecture", v, MODELS.names())))
        return v


def peer_model(params: dict[str, Any], student_architecture: str,
               student_kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """DML's second student: (architecture, kwargs), defaulting to the student's own."""
    arch = params.get("peer_architecture") or student_architecture
    kw = params.get("peer_kwargs")
    return arch, dict(student_kwargs if kw is None and arch == student_architecture else kw or {})


@register_method("dml", description="Deep mutual learning: two students, no fixed teacher; each learns from the "
                 "labels, (1 - alpha) * CE, and from the other's soft predictions, alpha * T^2 * KL. Both are "
                 "returned (student.safetensors, peer.safetensors).",
                 paper="Zhang, Xiang, Hospedales, Lu 2018, Deep Mutual Learning, CVPR, arXiv:1706.00384",
                 needs_teacher=False, params=DMLParams)
class DML(Distiller):
    def __init__(self, student: nn.Module, teachers: list[nn.Module], temperature: float, alpha: float,
                 params: dict[str, Any], *, peer: nn.Module | None = None, models: ModelFactory | None = None,
                 **kw: Any):
        """The peer is built from params with `models` (the training loop's way), or given as `peer`."""
        super().__init__(student, [], temperature, alpha, params, models=models, **kw)
        self.peer_architecture: str | None = params.get("peer_architecture")
        self.peer_kwargs: dict[str, Any] = dict(params.get("peer_kwargs") or {})
        if peer is None:
            if models is None:
                raise ValueError("dml needs a model factory (or a built peer) to make its second student")
            self.peer_architecture, self.peer_kwargs = peer_model(params, models.student_architecture,
                                                                  models.student_kwargs)
            peer = models(self.peer_architecture, self.peer_kwargs)
        self.peer = peer

    def extra_students(self) -> dict[str, ExtraStudent]:
        return {"peer": ExtraStudent(self.peer, self.peer_architecture or type(self.peer).__name__,
                                     self.peer_kwargs)}

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: float,
                      t_out: TeacherOutput | None = None) -> tuple[torch.Tensor, Terms]:
        z1, z2 = self.student(x), self.peer(x)
        t, a = self.coefficients(epoch)
        return z1, mutual_loss(z1, z2, y, t, a, self.soft_scale(epoch))
