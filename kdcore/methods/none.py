"""`none`: plain supervised training on the labels, no teacher (a teacher, or the baseline of a job)."""
from __future__ import annotations

import torch

from kdcore.losses import cross_entropy
from kdcore.methods.base import Distiller, TeacherOutput, Terms, register_method


@register_method("none", description="Plain supervised training on the labels (no teacher): makes a teacher "
                 "or a baseline with the service itself.", needs_teacher=False)
class Supervised(Distiller):
    distills = False

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: float,
                      t_out: TeacherOutput | None = None) -> tuple[torch.Tensor, Terms]:
        logits = self.student(x)
        return logits, {"ce": cross_entropy(logits, y)}
