"""The interface every distillation method implements, in the style of mdistiller's `Distiller`.

A method owns the student, its frozen teachers and any modules of its own (FitNets regressors, the DML
peer) and answers `forward_train(x, y, epoch, t_out)` with the student's logits and a dict of named,
already weighted loss terms; the training loop sums them. `epoch` is fractional (epoch index plus the
share of its steps done) so that schedules and warm-ups move smoothly.

Teachers are run by `teacher_forward`, which returns every teacher's logits and the features the
method needs; the loop may pass a cached `TeacherOutput` instead (the teacher's input does not change
between epochs without augmentation), so a method never assumes its teachers ran in this step.
Before the optimizer is built the loop calls `setup(x)` once with a sample batch: methods that compare
features find their layers and size their regressors there, from a dry run.

The loop never asks which method runs. What differs between methods reaches it through this interface
only: `distills` (whether T and alpha apply), `models` (a `ModelFactory`, for a method that builds
further networks, e.g. DML's peer) and `extra_students()` (further trained models to save and report).
Each method lives in its own module beside its loss; kdcore/methods/__init__.py imports them all so
that they register.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from kdcore.batching import batch_limits, chunk_size
from kdcore.features import capture
from kdcore.losses import teacher_log_probs
from kdcore.registry import Registry
from kdcore.schedules import ScheduleSpec

Terms = dict[str, torch.Tensor]


def _eval(module: nn.Module) -> None:
    # torch.export programs are already traced in eval mode and some refuse .eval(); that is fine.
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):
        pass


@dataclass
class TeacherOutput:
    """What the teachers said about one batch: logits [K, B, C] (K teachers) and the first teacher's
    features by layer path. Cacheable: it depends on the input only, never on the epoch."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def index(self, idx: torch.Tensor) -> TeacherOutput:
        return TeacherOutput(self.logits[:, idx], {k: v[idx] for k, v in self.features.items()})


@dataclass(frozen=True)
class ModelFactory:
    """Builds further models for this job's dataset, on its device: what a method that trains more than
    the student needs (DML's peer). Knows the student's own architecture and kwargs, the usual default."""

    student_architecture: str
    student_kwargs: dict[str, Any]
    build: Callable[[str, dict[str, Any]], nn.Module]

    def __call__(self, architecture: str, kwargs: dict[str, Any]) -> nn.Module:
        return self.build(architecture, kwargs)


@dataclass(frozen=True)
class ExtraStudent:
    """A further trained model the loop saves as `<name>.safetensors` and reports under report[name]."""

    module: nn.Module
    architecture: str
    kwargs: dict[str, Any]


class Distiller(nn.Module):
    """Student plus frozen teachers. Only the student's (and a method's own) parameters train."""

    # False for training on labels alone: no temperature or alpha in the history, no teacher to compare with
    distills: bool = True

    def __init__(self, student: nn.Module, teachers: list[nn.Module], temperature: float, alpha: float,
                 params: dict[str, Any], *, teacher_weights: list[float] | None = None,
                 schedule: ScheduleSpec | None = None, epochs: int = 1, models: ModelFactory | None = None):
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
        w = torch.tensor(teacher_weights if teacher_weights else [1.0] * max(1, len(self.teachers)))
        self.register_buffer("teacher_weights", w / w.sum(), persistent=False)
        self.schedule = schedule or ScheduleSpec()
        self.epochs = epochs

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        for t in self.teachers:  # teachers stay in eval mode (batch norm statistics, dropout)
            _eval(t)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ---- what a method needs from its teachers ----------------------------------------------------
    def teacher_layers(self) -> list[str]:
        """Layer paths of the first teacher whose outputs this method compares (after setup)."""
        return []

    def setup(self, x: torch.Tensor) -> None:
        """Called once with a sample batch before the optimizer is built."""

    def extra_students(self) -> dict[str, ExtraStudent]:
        """Further trained models to save and evaluate beside the student (the DML peer)."""
        return {}

    @torch.no_grad()
    def teacher_forward(self, x: torch.Tensor) -> TeacherOutput:
        layers = self.teacher_layers()
        if not layers:
            return TeacherOutput(self.teacher_forward_logits(x))
        first, feats = self._features(x, layers)
        rest = [t(x).float() for t in self.teachers[1:]]
        return TeacherOutput(torch.stack([first, *rest]), feats)

    def _features(self, x: torch.Tensor, layers: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The first teacher's logits and features on x. A teacher with limited batches (a program exported
        with a fixed or bounded batch) is called chunk by chunk here, so that its hooks see every row: the
        module would otherwise chunk inside one call and the hooks keep only the last chunk's outputs."""
        teacher = self.teachers[0]
        step = chunk_size(batch_limits(teacher), x.shape[0])
        logits: list[torch.Tensor] = []
        feats: dict[str, list[torch.Tensor]] = {}
        with capture(teacher, layers, "the teacher") as got:
            for chunk in x.split(step):
                logits.append(teacher(chunk).float())
                for k, v in got.items():  # a padded chunk's features have the padding rows too
                    feats.setdefault(k, []).append(v[:chunk.shape[0]])
                got.clear()
        if len(logits) == 1:
            return logits[0], {k: v[0] for k, v in feats.items()}
        return torch.cat(logits), {k: torch.cat(v) for k, v in feats.items()}

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teachers' joint prediction: one teacher's logits, or the log of the ensemble's weighted
        mean probabilities (valid logits for top-k and cross-entropy)."""
        return self.joint_logits(self.teacher_forward_logits(x))

    def joint_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Per-teacher logits [K, B, C] -> the joint prediction [B, C] (see teacher_logits)."""
        return z[0] if z.shape[0] == 1 else teacher_log_probs(z, 1.0, self.teacher_weights)

    @torch.no_grad()
    def teacher_forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([t(x).float() for t in self.teachers])

    # ---- schedules ----------------------------------------------------------------------------------
    def coefficients(self, epoch: float) -> tuple[float, float]:
        """(T, weight of the soft term) at this fractional epoch: schedules and warm-up applied."""
        s = self.schedule
        t = s.temperature_at(self.temperature, epoch, self.epochs)
        a = s.alpha_at(self.alpha, epoch, self.epochs)
        return t, a

    def soft_scale(self, epoch: float) -> float:
        return self.schedule.warmup_at(epoch)

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: float,
                      t_out: TeacherOutput | None = None) -> tuple[torch.Tensor, Terms]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


METHODS: Registry[Callable[..., Distiller]] = Registry("method")


def register_method(name: str, *, description: str, paper: str = "", needs_teacher: bool = True,
                    logits_only: bool = True, multi_teacher: bool = False,
                    params: type[BaseModel] | None = None) -> Callable[[type[Distiller]], type[Distiller]]:
    """`logits_only` methods work with any teacher, ONNX ones included (they need no features);
    `multi_teacher` ones accept a list of teachers, whose soft targets they average."""
    return METHODS.register(name, description=description, paper=paper, needs_teacher=needs_teacher,
                            logits_only=logits_only, multi_teacher=multi_teacher, params=params)


def method_catalog() -> list[dict[str, Any]]:
    out = []
    for e in METHODS:
        params = e.meta.get("params")
        out.append({
            "name": e.name, "description": e.meta["description"], "paper": e.meta["paper"],
            "needs_teacher": e.meta["needs_teacher"], "logits_only": e.meta["logits_only"],
            "multi_teacher": e.meta["multi_teacher"],
            "params": params.model_json_schema() if params else {"type": "object", "properties": {}},
            "common": {"temperature": "T > 0, default 4", "alpha": "weight of the soft term in [0, 1], default 0.9",
                       "schedule": ScheduleSpec.model_json_schema()},
        })
    return out
