"""The one distillation loop: CPU and CUDA on the same path, seeded, checkpointed every epoch.

`run()` trains the student with the chosen method (and, with `baseline: true`, the same student again
on labels alone), evaluates after every epoch, writes `checkpoint.pt` (kdcore.state.TrainState) after
every epoch so that a re-delivered job resumes where it stopped, and finally writes `student.safetensors`
(plus any further model the method trained, e.g. `peer.safetensors`), `report.json` and `curves.png` into
the work directory. Progress leaves only through `on_event`; cancellation enters only through
`should_stop()`. The loop never asks which method runs: a method is a `Distiller` (kdcore.methods).

Read top to bottom: `run` (the job), `train_phase` (one phase's epochs), `train_step` (one optimizer step).
Around it: hardware policy in kdcore.hardware, optimizer and LR schedule in kdcore.optim, the teacher's
outputs in kdcore.teacher_cache, the report in kdcore.report.
"""
from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.checkpoints import save_student
from kdcore.datasets import DatasetInfo, augment_batch
from kdcore.datasets.base import Data, HeldOutData, Split, TensorSplit, validation_size
from kdcore.divergence import check_divergence
from kdcore.errors import Cancelled, Diverged, FeatureError, JobError
from kdcore.evaluate import evaluate, score
from kdcore.hardware import (
    autocast,
    compile_student,
    resolve_device,
    resolve_precision,
    resolve_teacher_precision,
    set_threads,
    uncompile,
    use_channels_last,
)
from kdcore.methods import METHODS, Distiller, ModelFactory, TeacherOutput
from kdcore.models import count_params, create_model, validate_model_kwargs
from kdcore.optim import build_optimizer, build_scheduler, steps_per_epoch
from kdcore.progress import EventFn, Progress
from kdcore.report import build_report, plot_curves
from kdcore.rescue import PROBE_SIZE, Guard, Snapshot, window_steps
from kdcore.spec import JobSpec
from kdcore.state import CHECKPOINT, TrainState
from kdcore.teacher_cache import DEFAULT_MAX_BYTES, Teacher, TeacherCache, teacher_test_logits, train_outputs

__all__ = ["CHECKPOINT", "Cancelled", "JobError", "Teacher", "run", "train_phase", "train_step"]


def run(spec: JobSpec, data: Data, teachers: list[Teacher], workdir: Path,
        on_event: EventFn = lambda kind, data: None, should_stop: Callable[[], bool] = lambda: False, *,
        device: torch.device | None = None, threads: int | None = None, cache_dir: Path | None = None,
        teacher_cache: bool = True, cache_max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Run a whole job; returns the report (also written to workdir/report.json).

    device: where to run; None resolves spec.resources.device (kdcore.hardware.resolve_device). threads:
    torch's thread count (kdcore.hardware.set_threads; None caps it at the CPUs this process may use).
    Teacher outputs are computed once per job when the teacher's input is deterministic, and kept under
    `cache_dir` for later jobs on the same teacher and data (kdcore.teacher_cache); `teacher_cache=False`
    runs the teacher at every step instead. Features above `cache_max_bytes` are not cached.
    """
    wall0 = time.time()
    set_threads(threads)
    cache = TeacherCache(cache_dir, cache_max_bytes) if teacher_cache else None
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = workdir / CHECKPOINT
    device = device if device is not None else resolve_device(spec.resources.device)
    precision = resolve_precision(spec.resources.precision, device)
    torch.manual_seed(spec.training.seed)
    data = data.to(device)
    n_val = validation_size(len(data.train), spec.training.validation)
    if n_val:
        if n_val > len(data.train) // 2:
            raise JobError("bad_params", f"training.validation holds out {n_val} of the {len(data.train)} training "
                           "samples; at most half of them may be held out")
        data = HeldOutData.hold_out(data, n_val, spec.training.seed)
    for t in teachers:
        t.module.to(device)
    for t in teachers:
        _probe(t.module, data.train.head(2), t.label, data.info.num_classes)
    state = TrainState.load(ckpt_path, device)

    phases = [("distill", spec.distillation.method)] + ([("baseline", "none")] if spec.baseline else [])
    steps = steps_per_epoch(len(data.train), spec.training.batch_size)
    progress = Progress(on_event, steps * spec.training.epochs * len(phases),
                        state.steps_done(steps * spec.training.epochs, steps, [p for p, _ in phases]))

    teacher_preds, reference = None, None
    if teachers:  # the teachers' own test scores, and their predictions for the student's agreement
        d = spec.distillation
        judge = Distiller(nn.Identity(), [t.module for t in teachers], d.temperature, d.alpha, d.params,
                          teacher_weights=[t.weight for t in spec.teachers])
        t_eval = score(teacher_test_logits(judge, teachers, data.test, device, precision, cache), data.test.labels)
        teacher_preds = t_eval.pop("preds")
        # the teachers' score on the samples the rescues judge by: the reference a student at chance is held to
        judged = judge_split(data)
        reference = score(teacher_test_logits(judge, teachers, judged, device, precision, cache),
                          judged.labels)["top1"]
        if isinstance(data, HeldOutData):
            t_eval["val_top1"] = reference
        state.done.setdefault("teacher", t_eval)

    for phase, method in phases:
        if phase in state.done:
            continue
        distiller = train_phase(phase, method, spec, data, teachers, device, precision, state, ckpt_path, progress,
                                on_event, should_stop, cache, reference)
        if spec.training.keep == "best" and state.best is not None:
            distiller.load_state_dict(state.best["model"])
        result = _phase_result(phase, distiller, spec, data, state, workdir, device, precision, teacher_preds)
        state.finish(phase, result)
        state.save(ckpt_path)

    report = build_report(spec, state.done, teachers, device, precision, time.time() - wall0,
                          n_val, len(data.train))
    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    plot_curves(report, workdir / "curves.png")
    on_event("log", {"message": f"student top1 {report['student']['top1']:.4f}"})
    return report


def train_phase(phase: str, method: str, spec: JobSpec, data: Data, teachers: list[Teacher],
                device: torch.device, precision: str, state: TrainState, ckpt_path: Path, progress: Progress,
                on_event: EventFn, should_stop: Callable[[], bool], cache: TeacherCache | None = None,
                reference: float | None = None) -> Distiller:
    """Trains one phase's epochs (from its checkpoint when state has one); returns the trained distiller.

    Every `window` steps and at every epoch's end the phase's Guard (kdcore.rescue) checks the loss and the
    accuracy on validation samples; a failed check rolls back to the last good state with half the LR.
    `reference`: the teachers' top-1 on the judged samples (judge_split), None without teachers."""
    tr, info = spec.training, data.info
    torch.manual_seed(tr.seed)
    distiller = build_distiller(method, spec, data, teachers, device)
    n = len(data.train)
    bs, steps = min(tr.batch_size, n), steps_per_epoch(n, tr.batch_size)
    opt = build_optimizer(tr, distiller.trainable_parameters())
    sched = build_scheduler(tr, opt, steps)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if state.resumes(phase):
        distiller.load_state_dict(state.model)
        opt.load_state_dict(state.optimizer)
        sched.load_state_dict(state.scheduler)
        on_event("log", {"message": f"resumed {phase} from its epoch {state.epoch} checkpoint"})
    else:
        state.start(phase)
    start_epoch = state.epoch
    on_event("phase", {"phase": phase, "method": method, "epochs": tr.epochs, "start_epoch": start_epoch,
                       "steps_per_epoch": steps, "device": str(device), "precision": precision})
    if start_epoch >= tr.epochs:
        return distiller

    # the teachers' outputs, once for the whole phase when their input is deterministic
    t_cache = time.perf_counter()
    t_precision = resolve_teacher_precision(spec.resources.precision, device, precision)
    cached = train_outputs(distiller, teachers, data.train, spec.dataset.augment, device, t_precision, cache,
                           should_stop)
    if cached is not None:
        on_event("log", {"message": f"teacher cache: {cached.status}"
                         + (f" in {cached.seconds:.2f} s" if cached.output else "")})
        state.teacher_cache, state.teacher_precision = cached.status, t_precision
    t_out_all = cached.output if cached else None
    # per step, a teacher in another precision than the student runs apart, under its own autocast
    teacher_apart = t_precision if distiller.teachers and t_out_all is None and t_precision != precision else None
    pending_s = time.perf_counter() - t_cache  # counted in the first epoch trained: it is done for it
    state.compile = compile_student(distiller.student, spec.resources.compile)
    if state.compile.startswith("failed"):
        on_event("log", {"message": f"torch.compile {state.compile}"})
    augment = spec.dataset.augment == "standard"
    channels_last = use_channels_last(device, distiller.student, data.train.head(1).ndim)
    names: list[str] = []  # the method's loss terms, in the order of the stacked values

    val = data.val if isinstance(data, HeldOutData) else None
    judged = judge_split(data)
    probe = TensorSplit(judged.head(PROBE_SIZE), judged.labels[:PROBE_SIZE])
    window = window_steps(steps)
    advice = f"lower training.lr (now {tr.lr:g})"
    if distiller.distills and spec.distillation.temperature > 1:
        advice += (f" or training.grad_clip; the soft term's gradient on the logits is bounded by alpha*T = "
                   f"{spec.distillation.alpha * spec.distillation.temperature:g} times that of the hard term at "
                   f"T={spec.distillation.temperature:g} (docs/methods.md)")
    guard = Guard(info.num_classes, reference, tr.max_rescues, state.rescues, advice)

    def rescue(why: str, epoch: int, step: int, to: Snapshot) -> torch.Tensor | None:
        bases = list(sched.base_lrs)  # the rollback restores the older LR; the halving starts from this one
        sums = to.restore(distiller, opt, sched, scaler)
        row = guard.rescue(why, epoch, step, opt, sched, bases)
        progress.rewind(step - to.step)
        on_event("rescue", {"phase": phase, **row, "to_step": to.step})
        on_event("log", {"level": "warning", "message": f"{phase}: {why} at epoch {epoch + 1} step {step}; "
                         f"rolled back to step {to.step} with lr {row['lr_after']:g}"})
        return sums

    epoch = start_epoch
    while epoch < tr.epochs:
        distiller.train()
        t0 = time.perf_counter()
        gen = torch.Generator(device="cpu").manual_seed(tr.seed * 100003 + epoch)
        order = torch.randperm(n, generator=gen).to(device)
        term_sums: torch.Tensor | None = None  # accumulated on device: no host sync per step
        start = good = Snapshot.take(0, distiller, opt, sched, scaler, None)  # a failed epoch goes back to start
        batches = data.train.batches(order, bs, steps)  # a split on disk reads ahead while this one trains
        i = 0
        while i < steps:
            if should_stop():
                raise Cancelled()
            idx = order[i * bs:(i + 1) * bs]
            frac_epoch = epoch + i / steps
            x, y = get_batch(data, next(batches), idx, gen, device, augment, channels_last)
            t_out = teacher_batch(distiller, x, idx, t_out_all, device, teacher_apart)
            try:
                terms, names = train_step(distiller, opt, sched, scaler, x, y, t_out, frac_epoch, device, precision,
                                          tr.grad_clip)
            except Exception as e:  # the first call compiles; a compiler that fails must not fail the job
                if not (state.compile == "on" and i == 0 and epoch == start_epoch):
                    raise
                uncompile(distiller.student)
                state.compile = f"failed ({type(e).__name__}: {str(e)[:200]}); eager"
                on_event("log", {"message": f"torch.compile {state.compile}"})
                opt.zero_grad(set_to_none=True)
                t_out = teacher_batch(distiller, x, idx, t_out_all, device, teacher_apart)
                terms, names = train_step(distiller, opt, sched, scaler, x, y, t_out, frac_epoch, device, precision,
                                          tr.grad_clip)
            term_sums = terms.clone() if term_sums is None else term_sums.add_(terms)
            i += 1
            if progress.step():
                cur = terms.sum().item()  # a host sync, twice a second at most
                progress.emit(phase=phase, epoch=epoch + 1, epochs=tr.epochs,
                              loss=round(cur, 6) if math.isfinite(cur) else None, lr=sched.get_last_lr()[0])
            if i % window and i < steps and i != 1:  # the first step's loss (the untrained one) seeds the average
                continue
            # a window's end: its mean loss and the probe's accuracy decide whether this is a good state
            done_before = float(good.sums.sum()) if good.sums is not None else 0.0
            mean = (float(term_sums.sum()) - done_before) / (i - good.step)
            p_ev = evaluate(distiller.student, probe, device, precision)
            why = guard.window(mean, p_ev["top1"], p_ev["loss"], i / steps, epoch * steps + i)
            if why is None:
                # after one step the running average has its seed; the epoch's start stays the good state
                if i > 1 and not guard.below_teacher(p_ev["top1"]):
                    good = Snapshot.take(i, distiller, opt, sched, scaler, term_sums)
                continue
            term_sums, i = rescue(why, epoch, i, good), good.step
            batches = data.train.batches(order[i * bs:], bs, steps - i)
        seconds = time.perf_counter() - t0 + pending_s
        pending_s = 0.0
        sums = term_sums.tolist() if term_sums is not None else []
        train_loss = sum(sums) / steps
        t1 = time.perf_counter()
        ev = evaluate(distiller.student, data.test, device, precision)  # reported only: nothing chooses on it
        ev_val = evaluate(distiller.student, val, device, precision) if val is not None else None
        judge_top1 = ev_val["top1"] if ev_val is not None else evaluate(distiller.student, probe, device,
                                                                        precision)["top1"]
        why = guard.epoch(judge_top1, (epoch + 1) * steps, epoch + 1 == tr.epochs)
        if why is not None:  # the whole epoch again from its start, with half the step
            rescue(why, epoch, steps, start)
            continue
        row = {"epoch": epoch + 1, "train_loss": round(train_loss, 6), "test_top1": ev["top1"],
               "test_loss": ev["loss"], "val_top1": ev_val["top1"] if ev_val else None,
               "val_loss": ev_val["loss"] if ev_val else None, "seconds": round(seconds, 3),
               "eval_seconds": round(time.perf_counter() - t1, 3),
               "losses": {k: round(v / steps, 6) for k, v in zip(names, sums, strict=False)}}
        if distiller.distills:
            t_now, a_now = distiller.coefficients(epoch + 0.5)  # mid-epoch values, for the curves
            row.update(temperature=round(t_now, 6), alpha=round(a_now, 6))
        state.history.append(row)
        state.judged.append(judge_top1)
        on_event("epoch", {"phase": phase, **row, "epochs": tr.epochs})
        try:  # the slower signs over several epochs (kdcore.divergence), on the judged samples too
            check_divergence(state.history, info.num_classes, tr.lr,
                             spec.distillation.temperature if distiller.distills else None,
                             teacher_top1=reference if distiller.distills else None, accs=state.judged)
        except Diverged as e:
            raise JobError("diverged", str(e)) from None
        if ev_val is not None and (state.best is None or ev_val["top1"] > state.best["val_top1"]):
            state.best = {"epoch": epoch + 1, "val_top1": ev_val["top1"],
                          "model": {k: v.detach().clone() for k, v in distiller.state_dict().items()}}
        epoch += 1
        state.end_epoch(epoch, distiller, opt, sched)
        state.save(ckpt_path)
    return distiller


def judge_split(data: Data) -> Split:
    """The samples every check reads: the validation split, or without one (`training.validation: 0`) the
    first PROBE_SIZE samples of the train split. Never the test split."""
    if isinstance(data, HeldOutData):
        return data.val
    return TensorSplit(data.train.head(PROBE_SIZE), data.train.labels[:PROBE_SIZE])


def get_batch(data: Data, x: torch.Tensor, idx: torch.Tensor, gen: torch.Generator, device: torch.device,
              augment: bool, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The training samples idx (x: their inputs, read by the split), with their labels, augmented (random
    crop/flip or shift, from gen on the CPU) when asked."""
    y = data.train.labels.index_select(0, idx)
    if augment:
        x = augment_batch(x, data.info, gen if device.type == "cpu" else None)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def teacher_batch(distiller: Distiller, x: torch.Tensor, idx: torch.Tensor, cached: TeacherOutput | None,
                  device: torch.device, apart: str | None) -> TeacherOutput | None:
    """The teachers' outputs for this batch: rows of the cached ones; or, when the teacher runs in another
    precision than the student (`apart`), its forward under that autocast; else None (the method runs it)."""
    if cached is not None:
        return cached.index(idx)
    if apart is not None:
        with autocast(device, apart):
            return distiller.teacher_forward(x)
    return None


def train_step(distiller: Distiller, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
               scaler: torch.amp.GradScaler, x: torch.Tensor, y: torch.Tensor, t_out: TeacherOutput | None,
               frac_epoch: float, device: torch.device, precision: str,
               grad_clip: float | None = None) -> tuple[torch.Tensor, list[str]]:
    """One optimizer step on (x, y); returns the detached loss terms, stacked (no host sync), and their names.
    grad_clip: the gradient's global L2 norm is clipped to it (training.grad_clip)."""
    with autocast(device, precision):
        _, terms = distiller.forward_train(x, y, frac_epoch, t_out)
        stacked = torch.stack([v.float() for v in terms.values()])
        loss = stacked.sum()
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(opt)  # clip the true gradient, not the fp16 loss-scaled one
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
    scaler.step(opt)
    scaler.update()
    sched.step()
    return stacked.detach(), list(terms)


def build_model(info: DatasetInfo, device: torch.device, architecture: str, kwargs: dict[str, Any]) -> nn.Module:
    """A fresh registry model for this dataset, on device."""
    # validate_model_kwargs drops kwargs that merely repeat the dataset's class count or channels
    kw = validate_model_kwargs(architecture, kwargs, num_classes=info.num_classes, in_channels=info.in_channels)
    return create_model(architecture, num_classes=info.num_classes, in_channels=info.in_channels,
                        input_size=info.image_size, **kw).to(device)


def build_distiller(method: str, spec: JobSpec, data: Data, teachers: list[Teacher],
                    device: torch.device) -> Distiller:
    """A fresh student inside the method, set up from a dry run on a few training samples (feature layers
    found, regressors sized) before the optimizer sees its parameters."""
    d, s = spec.distillation, spec.student
    models = ModelFactory(s.architecture, s.kwargs, functools.partial(build_model, data.info, device))
    student = models(s.architecture, s.kwargs)
    if use_channels_last(device, student, data.train.head(1).ndim):
        student = student.to(memory_format=torch.channels_last)
    modules = [t.module for t in teachers] if METHODS.get(method).meta["needs_teacher"] else []
    weights = [t.weight for t in spec.teachers] if modules else None
    distiller: Distiller = METHODS.create(method, student, modules, d.temperature, d.alpha, d.params,
                                          teacher_weights=weights, schedule=d.schedule, epochs=spec.training.epochs,
                                          models=models)
    try:
        distiller.setup(data.train.head(64))
    except (FeatureError, ValueError) as e:
        raise JobError("bad_params", f"method {method!r}: {e}") from e
    return distiller.to(device)


def _phase_result(phase: str, distiller: Distiller, spec: JobSpec, data: Data, state: TrainState,
                  workdir: Path, device: torch.device, precision: str,
                  teacher_preds: torch.Tensor | None) -> dict[str, Any]:
    """A finished phase's scores; for the distillation phase also its files (student and any further
    model the method trained, e.g. DML's peer) and the student's agreement with the teacher."""
    student = distiller.student
    ev = evaluate(student, data.test, device, precision)
    preds = ev.pop("preds")
    result: dict[str, Any] = {"top1": ev["top1"], "top5": ev["top5"], "epochs": state.history,
                              "rescues": state.rescues, **state.phase_info()}
    if isinstance(data, HeldOutData):
        result["val_top1"] = evaluate(student, data.val, device, precision)["top1"]
    if spec.training.keep == "best" and state.best is not None:
        result["kept_epoch"] = state.best["epoch"]
    if phase != "distill":
        return result
    meta = {"method": spec.distillation.method, "seed": spec.training.seed}
    size = save_student(student, workdir / "student.safetensors", architecture=spec.student.architecture,
                        kwargs=spec.student.kwargs, dataset=data.info, extra={**meta, "test_top1": ev["top1"]})
    result.update(params=count_params(student), size_bytes=size)
    if teacher_preds is not None:
        result["agreement"] = round(float((preds == teacher_preds).float().mean().item()), 6)
    extras: dict[str, Any] = {}
    for name, m in distiller.extra_students().items():
        e2 = evaluate(m.module, data.test, device, precision)
        size2 = save_student(m.module, workdir / f"{name}.safetensors", architecture=m.architecture,
                             kwargs=m.kwargs, dataset=data.info, extra={**meta, "test_top1": e2["top1"]})
        extras[name] = {"architecture": m.architecture, "top1": e2["top1"], "top5": e2["top5"],
                        "params": count_params(m.module), "size_bytes": size2}
    if extras:
        result["extra_students"] = extras
    return result


def _probe(model: nn.Module, x: torch.Tensor, what: str, num_classes: int) -> None:
    try:
        with torch.no_grad():
            out = model(x)
    except JobError:  # already coded, e.g. teacher_error from a teacher's runtime (kdcore/teacher_io.py)
        raise
    except Exception as e:  # any architecture/input mismatch; the message is the useful part
        raise JobError("model_input", f"{what} cannot take this dataset's input {tuple(x.shape[1:])}: {e}") from e
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise JobError("class_mismatch", f"{what} outputs {tuple(out.shape[1:])} per sample but the dataset "
                       f"has {num_classes} classes")
