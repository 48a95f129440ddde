"""What a job has done so far, in one place: `TrainState`, written to checkpoint.pt after every epoch.

A re-delivered job loads it and continues where it stopped: finished phases (and the teacher's test
scores) are in `done`; the phase in progress has its epoch count, history and the distiller's, optimizer's
and LR schedule's state after that epoch. The file is a plain dict of tensors, numbers, strings, lists
and dicts (loaded with weights_only=True, no pickle); its keys are those the loop has always written
("student" holds the distiller's state dict), so a checkpoint of an earlier version still resumes.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT = "checkpoint.pt"
_FILE_KEYS = {"model": "student"}  # attribute -> key in the checkpoint file, where the two differ
_PHASE_INFO = ("teacher_cache", "teacher_precision", "compile")
_PHASE_LISTS = ("rescues", "judged")  # written only while a phase is in progress


@dataclass
class TrainState:
    """A job's progress: finished phases in `done`, the phase in progress in the other fields."""

    done: dict[str, Any] = field(default_factory=dict)  # phase -> its result; "teacher" -> its test scores
    phase: str | None = None  # the phase in progress
    epoch: int = 0  # its epochs done
    history: list[dict[str, Any]] = field(default_factory=list)  # its per-epoch rows
    model: dict[str, Any] | None = None  # distiller.state_dict(): the student plus a method's own modules
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    teacher_cache: str | None = None  # which path the teacher took in this phase (kdcore.teacher_cache)
    teacher_precision: str | None = None
    compile: str | None = None  # torch.compile status: on, off, or failed (...); eager
    rescues: list[dict[str, Any]] = field(default_factory=list)  # its rollbacks (kdcore.rescue)
    judged: list[float] = field(default_factory=list)  # per epoch: top-1 on the samples the checks read
    best: dict[str, Any] | None = None  # its epoch of highest validation top-1: epoch, val_top1, model

    # ---- the phase in progress ----------------------------------------------------------------------------
    def resumes(self, phase: str) -> bool:
        """True when this phase has an epoch checkpoint to continue from."""
        return self.phase == phase and self.model is not None

    def start(self, phase: str) -> None:
        """A phase from its first epoch."""
        self._clear_phase()
        self.phase = phase

    def end_epoch(self, epoch: int, distiller: nn.Module, opt: torch.optim.Optimizer,
                  sched: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.epoch, self.model = epoch, distiller.state_dict()
        self.optimizer, self.scheduler = opt.state_dict(), sched.state_dict()

    def phase_info(self) -> dict[str, str]:
        """teacher_cache, teacher_precision and compile of the phase, those that were set."""
        return {k: getattr(self, k) for k in _PHASE_INFO if getattr(self, k) is not None}

    def finish(self, phase: str, result: dict[str, Any]) -> None:
        """The phase's result into `done`; nothing of the phase in progress is kept."""
        self.done[phase] = result
        self._clear_phase()

    def steps_done(self, steps_per_phase: int, steps_per_epoch: int, phases: list[str]) -> int:
        steps = sum(steps_per_phase for p in phases if p in self.done)
        if self.phase and self.phase not in self.done:
            steps += steps_per_epoch * self.epoch
        return steps

    def _clear_phase(self) -> None:
        fresh = TrainState()
        for f in fields(self):
            if f.name != "done":
                setattr(self, f.name, getattr(fresh, f.name))

    # ---- the checkpoint file ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"done": self.done}
        if self.phase is not None:
            out.update(phase=self.phase, epoch=self.epoch, history=self.history)
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name not in ("done", "phase", "epoch", "history") and v is not None and (
                    self.phase is not None or f.name not in _PHASE_LISTS):
                out[_FILE_KEYS.get(f.name, f.name)] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        s = cls(done=dict(d.get("done") or {}))
        for f in fields(cls):
            key = _FILE_KEYS.get(f.name, f.name)
            if f.name != "done" and key in d:
                setattr(s, f.name, d[key])
        s.epoch, s.history = int(s.epoch), list(s.history)
        return s

    @classmethod
    def load(cls, path: Path, device: torch.device) -> TrainState:
        """The state in path, or a fresh one when there is no checkpoint yet."""
        if not path.exists():
            return cls()
        return cls.from_dict(torch.load(path, map_location=device, weights_only=True))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        buf = io.BytesIO()
        torch.save(self.to_dict(), buf)  # serialized first: torch's own file writer turns a full disk into an
        with open(tmp, "wb") as f:  # opaque error, while Python's raises OSError(ENOSPC): the worker's disk_full
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: a crash mid-write leaves the previous epoch's checkpoint intact
