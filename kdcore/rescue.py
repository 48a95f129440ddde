"""Divergence caught while it happens, and rescued: roll back to the last good state, halve the LR, go on.

A step that is too large for a model can send it to a state it never leaves (dead ReLUs, saturated
logits): the loss stays finite, the student predicts one class, and without a check the job would end
`succeeded` with a useless student. Measured (issue 13): an mlp 1200-1200 teacher at 97 % on MNIST, a
lenet5 student distilled with the catalog's defaults (T=4, alpha 0.9, SGD lr 0.05) went to chance
about 20 steps into its only epoch, the gradient norm having jumped from ~0.5 to ~4; the same job at
lr 0.025 learned to 96.9 %. Large-scale trainers answer this the same way: keep the last state that
looked healthy, and when a check fails go back to it with half the step.

The loop (kdcore.train) checks every `window` steps (about WINDOWS_PER_EPOCH times an epoch) and at
every epoch's end. A window fails when
- its mean training loss is not finite;
- the student's cross-entropy on a small probe batch of the validation split (PROBE_SIZE samples)
  spiked: at least SPIKE_FACTOR times its running average over earlier windows and at least SPIKE_MIN
  nats above it (so small late-training values wiggling do not count). The probe's cross-entropy, not
  the training loss, because a method's loss may grow by design (a warm-up of the soft term, a
  temperature schedule) while the probe's means the same thing for every method;
- its mean training loss blew up, at least BLOW_UP_FACTOR times its running average, while the probe's
  accuracy is near chance or more than SPIKE_DROP below its best (a network a step killed predicts one
  class with a flat probe loss). The factor is large because a method's loss may grow by design: a
  warm-up of DKD's soft term multiplied it by 9 in one window on digits, with a student still near
  chance;
- accuracy on the probe batch fell back near chance after it had been at least halfway from chance
  to perfect in this phase;
- accuracy on the probe batch is still near chance STUCK_AFTER of the way into an epoch, and at least
  STUCK_MIN_STEPS steps into the phase, while the teacher scores at least halfway from chance to
  perfect on the validation split (measured: healthy lenet5 students on MNIST were at 0.5-0.8 twenty
  steps in, of 422; the collapsed one stayed at chance).
An epoch fails when its validation top-1 is near chance while the teacher scores at least halfway from
chance to perfect on the same validation samples (the data is learnable, so the step is what keeps the
student at chance) and the phase has trained STUCK_MIN_STEPS steps or this is its last epoch (a small
dataset's student may be slow for a few dozen steps; a finished one at chance is never a success),
or while the phase has been rescued before (a rollback that did not take).
The window that passes becomes the new "last good state" (a copy in memory), unless its student is
near chance below a good teacher; an epoch's failure goes back to the epoch's start. Each rescue is an
event and a report row; after `training.max_rescues` of them in a phase the job fails with `diverged`.

Every check reads the validation split (or, with `training.validation: 0`, the first samples of the
train split), never the test split.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdcore.errors import JobError

WINDOWS_PER_EPOCH = 20
MIN_WINDOW = 10  # steps: a check costs one host sync and a probe forward
PROBE_SIZE = 512
SPIKE_FACTOR = 4.0
SPIKE_MIN = 1.0
SPIKE_DROP = 0.1
BLOW_UP_FACTOR = 50.0
STUCK_AFTER = 0.25
STUCK_MIN_STEPS = 100
EMA = 0.7  # weight of the running average against the newest window's probe loss


def window_steps(steps_per_epoch: int) -> int:
    return max(MIN_WINDOW, math.ceil(steps_per_epoch / WINDOWS_PER_EPOCH))


def near_chance(acc: float, num_classes: int) -> bool:
    """Within a tenth of the way from chance to perfect."""
    chance = 1.0 / num_classes
    return acc <= chance + 0.1 * (1.0 - chance)


def good(acc: float, num_classes: int) -> bool:
    """At least halfway from chance to perfect."""
    chance = 1.0 / num_classes
    return acc >= chance + 0.5 * (1.0 - chance)


def _spiked(value: float, avg: float | None, factor: float = SPIKE_FACTOR) -> bool:
    return avg is not None and value >= factor * avg and value - avg >= SPIKE_MIN


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_clone(v) for v in obj)
    return copy.copy(obj)


@dataclass
class Snapshot:
    """Everything a rollback restores: the distiller (student and a method's own modules), optimizer, LR
    schedule and loss scaler, at step `step` of the epoch, with the loss sums accumulated up to it."""

    step: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    sums: torch.Tensor | None

    @classmethod
    def take(cls, step: int, distiller: nn.Module, opt: torch.optim.Optimizer,
             sched: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
             sums: torch.Tensor | None) -> Snapshot:
        return cls(step, _clone(distiller.state_dict()), _clone(opt.state_dict()), _clone(sched.state_dict()),
                   _clone(scaler.state_dict()), None if sums is None else sums.clone())

    def restore(self, distiller: nn.Module, opt: torch.optim.Optimizer,
                sched: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler) -> torch.Tensor | None:
        distiller.load_state_dict(self.model)
        opt.load_state_dict(_clone(self.optimizer))
        sched.load_state_dict(_clone(self.scheduler))
        if self.scaler:
            scaler.load_state_dict(_clone(self.scaler))
        return None if self.sums is None else self.sums.clone()


def halve_lr(opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR,
             bases: list[float]) -> tuple[float, float]:
    """Sets the schedule's base LR to half of `bases` (the base LRs in force before the rollback, which
    restored an older, larger one) from here on; kept in the scheduler's state, so an epoch checkpoint
    resumes with it. Returns (base LR before, after)."""
    before = float(bases[0])
    sched.base_lrs = [b * 0.5 for b in bases]
    for group, base, fn in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas, strict=True):
        group["initial_lr"] = base
        group["lr"] = base * fn(sched.last_epoch)
    return before, float(sched.base_lrs[0])


class Guard:
    """The checks of one phase and its rescues (the list lives in TrainState, so a resumed phase keeps it)."""

    def __init__(self, num_classes: int, reference_top1: float | None, max_rescues: int,
                 rescues: list[dict[str, Any]], advice: str):
        self.num_classes, self.reference = num_classes, reference_top1
        self.max_rescues, self.rescues, self.advice = max_rescues, rescues, advice
        self.avg: float | None = None  # running average of the probe's loss
        self.avg_train: float | None = None  # running average of window mean training losses
        self.best_probe = 0.0

    def below_teacher(self, top1: float) -> bool:
        """Near chance while the teacher is good: not a state to come back to."""
        return (self.reference is not None and good(self.reference, self.num_classes)
                and near_chance(top1, self.num_classes))

    def window(self, mean_loss: float, probe_top1: float, probe_loss: float, into_epoch: float = 0.0,
               phase_steps: int = 0) -> str | None:
        """Why this window failed, or None (then the probe's loss joins the running average).
        mean_loss: the window's mean training loss; probe_top1, probe_loss: on the probe batch; into_epoch:
        the fraction of the epoch done; phase_steps: the steps the phase has trained."""
        if not math.isfinite(mean_loss) or not math.isfinite(probe_loss):
            return f"the loss became {mean_loss if not math.isfinite(mean_loss) else probe_loss}"
        if _spiked(probe_loss, self.avg):
            return (f"the validation loss spiked to {probe_loss:.4g} against a running average of {self.avg:.4g} "
                    f"(training loss {mean_loss:.4g})")
        if _spiked(mean_loss, self.avg_train, BLOW_UP_FACTOR) and (near_chance(probe_top1, self.num_classes)
                                                   or probe_top1 < self.best_probe - SPIKE_DROP):
            return (f"the training loss blew up to {mean_loss:.4g} against a running average of "
                    f"{self.avg_train:.4g}, with validation accuracy at {probe_top1:.3f}")
        if good(self.best_probe, self.num_classes) and near_chance(probe_top1, self.num_classes):
            return (f"validation accuracy fell from {self.best_probe:.3f} to {probe_top1:.3f} "
                    f"(chance is {1 / self.num_classes:.3f})")
        if into_epoch >= STUCK_AFTER and phase_steps >= STUCK_MIN_STEPS and self.below_teacher(probe_top1):
            return (f"validation accuracy is still {probe_top1:.3f} (chance is {1 / self.num_classes:.3f}) "
                    f"{into_epoch:.0%} into the epoch while the teacher scores {self.reference:.3f}")
        self.best_probe = max(self.best_probe, probe_top1)
        self.avg = probe_loss if self.avg is None else EMA * self.avg + (1 - EMA) * probe_loss
        self.avg_train = mean_loss if self.avg_train is None else EMA * self.avg_train + (1 - EMA) * mean_loss
        return None

    def epoch(self, val_top1: float, phase_steps: int, last: bool) -> str | None:
        """Why this epoch failed, or None. phase_steps: the steps the phase has trained; last: its last epoch."""
        if not near_chance(val_top1, self.num_classes):
            return None
        at = f"validation accuracy is {val_top1:.3f} (chance is {1 / self.num_classes:.3f}) at the end of the epoch"
        if self.below_teacher(val_top1) and (last or phase_steps >= STUCK_MIN_STEPS):
            return (f"{at} while the teacher scores {self.reference:.3f} on the same samples (a student still "
                    "learning slowly needs more epochs rather than a smaller step)")
        if self.rescues:  # a phase that diverged once and sits at chance now was not rescued
            return f"{at} after {len(self.rescues)} rescue(s) in this phase"
        return None

    def rescue(self, why: str, epoch: int, step: int, opt: torch.optim.Optimizer,
               sched: torch.optim.lr_scheduler.LambdaLR, bases: list[float]) -> dict[str, Any]:
        """Records a rescue and sets the LR to half of `bases` (the caller has rolled back); raises JobError
        `diverged` once the phase has used `max_rescues`."""
        if len(self.rescues) >= self.max_rescues:
            tried = ", ".join(f"{r['lr_after']:g}" for r in self.rescues)
            raise JobError("diverged", f"training diverged in epoch {epoch + 1}, step {step}: {why}; "
                           f"{len(self.rescues)} rescue(s) already spent"
                           + (f" (rolled back with lr {tried})" if tried else "") + f"; {self.advice}")
        before, after = halve_lr(opt, sched, bases)
        row = {"epoch": epoch + 1, "step": step, "lr_before": before, "lr_after": after, "why": why}
        self.rescues.append(row)
        return row
