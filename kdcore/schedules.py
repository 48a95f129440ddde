"""Schedules over epochs for the temperature and alpha, and the warm-up of the soft term.

`distillation.schedule` in the JobSpec, e.g.

    {"temperature": {"kind": "linear", "start": 8, "end": 2},
     "alpha": {"kind": "sigmoid", "start": 0.0, "end": 0.9},
     "warmup_epochs": 2}

A schedule is evaluated at the fractional epoch e (epoch index plus the share of its steps done), with
progress p = e / epochs in [0, 1): the value moves from `start` at the first step to `end` at the last.
`start` and `end` default to the spec's own `temperature` / `alpha`, so naming only one end is enough.
Warm-up (progressive distillation) scales every soft (teacher) term by min(1, e / warmup_epochs).
"""
from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Kind = Literal["constant", "linear", "cosine", "step", "sigmoid"]


class Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Kind = Field("constant", description="constant: start throughout; linear / cosine: start -> end; "
                       "step: start * gamma^(milestones passed); sigmoid: a logistic ramp start -> end")
    start: float | None = Field(None, description="value at the first step (default: the spec's value)")
    end: float | None = Field(None, description="value at the last step (default: the spec's value)")
    milestones: list[int] = Field(default_factory=list, description="step: epochs (1-based) after which "
                                  "the value is multiplied by gamma")
    gamma: float = Field(0.5, gt=0, description="step: factor applied at each milestone")
    steepness: float = Field(10.0, gt=0, le=100, description="sigmoid: slope of the logistic ramp at mid-run")

    @model_validator(mode="after")
    def _step_has_milestones(self) -> Schedule:
        if self.kind == "step" and not self.milestones:
            raise ValueError("a step schedule needs `milestones` (epochs after which the value changes)")
        if self.kind != "step" and self.milestones:
            raise ValueError(f"`milestones` belong to step schedules, not {self.kind}")
        return self

    def value(self, default: float, epoch: float, epochs: int) -> float:
        start = default if self.start is None else self.start
        end = default if self.end is None else self.end
        p = min(max(epoch / max(epochs, 1), 0.0), 1.0)
        if self.kind == "constant":
            return start
        if self.kind == "linear":
            f = p
        elif self.kind == "cosine":
            f = 0.5 * (1.0 - math.cos(math.pi * p))
        elif self.kind == "sigmoid":
            # logistic ramp rescaled so that it starts exactly at `start` and ends exactly at `end`
            lo, hi = (1.0 / (1.0 + math.exp(self.steepness * 0.5)), 1.0 / (1.0 + math.exp(-self.steepness * 0.5)))
            f = (1.0 / (1.0 + math.exp(-self.steepness * (p - 0.5))) - lo) / (hi - lo)
        else:  # step
            return start * self.gamma ** sum(1 for m in self.milestones if epoch >= m)
        return start + (end - start) * f


class ScheduleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"temperature": {"kind": "linear", "start": 8, "end": 2}, "warmup_epochs": 1}]})

    temperature: Schedule | None = Field(None, description="schedule of T over the epochs")
    alpha: Schedule | None = Field(None, description="schedule of alpha (the soft term's weight) over the epochs")
    warmup_epochs: float = Field(0.0, ge=0, le=1000, description="ramp the soft term's weight linearly from 0 "
                                 "over this many epochs (progressive distillation); 0: no warm-up")

    @model_validator(mode="after")
    def _ranges(self) -> ScheduleSpec:
        for name, s, lo, hi in (("temperature", self.temperature, 1e-6, 100.0), ("alpha", self.alpha, 0.0, 1.0)):
            if s is None:
                continue
            for end in ("start", "end"):
                v = getattr(s, end)
                if v is not None and not lo <= v <= hi:
                    raise ValueError(f"{name}.{end} must be in [{lo:g}, {hi:g}], got {v}")
            if name == "alpha" and s.kind == "step" and s.gamma > 1 and s.start is not None \
                    and s.start * s.gamma ** len(s.milestones) > 1:
                raise ValueError("alpha's step schedule would exceed 1")
        return self

    def temperature_at(self, default: float, epoch: float, epochs: int) -> float:
        return default if self.temperature is None else self.temperature.value(default, epoch, epochs)

    def alpha_at(self, default: float, epoch: float, epochs: int) -> float:
        a = default if self.alpha is None else self.alpha.value(default, epoch, epochs)
        return min(max(a, 0.0), 1.0)

    def warmup_at(self, epoch: float) -> float:
        return 1.0 if self.warmup_epochs <= 0 else min(1.0, epoch / self.warmup_epochs)
