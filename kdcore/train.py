"""The one distillation loop: CPU and CUDA on the same path, seeded, checkpointed every epoch.

`run()` trains the student with the chosen method (and, with `baseline: true`, the same student again
on labels alone), evaluates after every epoch, writes `checkpoint.pt` after every epoch so that a
re-delivered job resumes where it stopped, and finally writes `student.safetensors`, `report.json` and
`curves.png` into the work directory. Progress leaves only through `on_event`; cancellation enters
only through `should_stop()`.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.checkpoints import save_student
from kdcore.datasets import TensorData, augment_batch
from kdcore.evaluate import evaluate
from kdcore.features import FeatureError
from kdcore.methods import METHODS, Distiller
from kdcore.models import count_params, create_model, validate_model_kwargs
from kdcore.report import plot_curves
from kdcore.spec import JobSpec

EventFn = Callable[[str, dict[str, Any]], None]
CHECKPOINT = "checkpoint.pt"
PROGRESS_EVERY_S = 0.5  # progress events at most twice a second: enough for a bar, cheap for Redis


class Cancelled(Exception):
    """should_stop() answered True; the loop stopped between two steps."""


class JobError(Exception):
    """A failure the user can act on; `code` is stable, `message` says what to change."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Teacher:
    module: nn.Module
    params: int | None = None
    size_bytes: int | None = None
    label: str = "teacher"


def resolve_device(requested: str) -> torch.device:
    env = os.environ.get("KD_WORKER_DEVICE")  # a GPU worker pinned to one device by `distillery worker --device`
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device(env if env and env.startswith("cuda") else "cuda")
    if requested == "cuda":
        raise JobError("no_cuda", "resources.device is cuda but this worker has no CUDA device")
    return torch.device("cpu")


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    # On CPUs without AVX-512 BF16, bf16 matmul is orders of magnitude slower than fp32: auto means fp32.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _lr_lambda(kind: str, total_steps: int, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    if kind == "cosine":
        return lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / max(1, total_steps)))
    if kind == "step":
        marks = [int(epochs * 0.5) * steps_per_epoch, int(epochs * 0.75) * steps_per_epoch]
        return lambda s: 0.1 ** sum(s >= m for m in marks if m > 0)
    return lambda s: 1.0


def _optimizer(spec: JobSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    t = spec.training
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                               nesterov=t.momentum > 0)
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=t.lr, weight_decay=t.weight_decay)


class _Progress:
    """Turns step counts into progress events (fraction over all phases, ETA from this run's pace)."""

    def __init__(self, on_event: EventFn, total_steps: int, done_steps: int):
        self.on_event, self.total, self.done = on_event, max(1, total_steps), done_steps
        self.start_done, self.t0, self.last = done_steps, time.monotonic(), 0.0

    def step(self) -> bool:
        """Counts one step; True when a progress event is due (at most every PROGRESS_EVERY_S)."""
        self.done += 1
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S:
            return False
        self.last = now
        return True

    def emit(self, **fields: Any) -> None:
        ran = self.done - self.start_done
        eta = (time.monotonic() - self.t0) / ran * (self.total - self.done) if ran > 0 else None
        self.on_event("progress", {**fields, "step": self.done, "steps": self.total,
                                   "fraction": round(self.done / self.total, 4),
                                   "eta_s": None if eta is None else round(eta, 1)})


def _check_finite(loss: float, epoch: int) -> None:
    if not math.isfinite(loss):
        raise JobError("non_finite_loss", f"the loss became {loss} in epoch {epoch + 1}; lower training.lr "
                       "(the soft term is scaled by T^2) or use precision fp32")


def _steps_per_epoch(n: int, batch_size: int) -> int:
    bs = min(batch_size, n)
    # A final batch of one sample breaks batch norm in training mode; that lone sample is dropped instead.
    return n // bs + (1 if n % bs > 1 else 0)


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write leaves the previous epoch's checkpoint intact


def _probe(model: nn.Module, x: torch.Tensor, what: str, num_classes: int) -> None:
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as e:  # any architecture/input mismatch; the message is the useful part
        raise JobError("model_input", f"{what} cannot take this dataset's input {tuple(x.shape[1:])}: {e}") from e
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise JobError("class_mismatch", f"{what} outputs {tuple(out.shape[1:])} per sample but the dataset "
                       f"has {num_classes} classes")


def _train_phase(phase: str, method: str, spec: JobSpec, data: TensorData, teachers: list[Teacher],
                 device: torch.device, precision: str, state: dict[str, Any], ckpt_path: Path,
                 progress: _Progress, on_event: EventFn, should_stop: Callable[[], bool]) -> nn.Module:
    tr, info = spec.training, data.info
    torch.manual_seed(tr.seed)
    # validate_model_kwargs drops kwargs that merely repeat the dataset's class count or channels
    kwargs = validate_model_kwargs(spec.student.architecture, spec.student.kwargs, num_classes=info.num_classes,
                                   in_channels=info.in_channels)
    student = create_model(spec.student.architecture, num_classes=info.num_classes, in_channels=info.in_channels,
                           input_size=info.image_size, **kwargs).to(device)
    if device.type == "cuda" and data.x_train.ndim == 4:
        student = student.to(memory_format=torch.channels_last)
    distiller = _build_distiller(method, spec, student, teachers, data, device)
    n = data.x_train.shape[0]
    bs = min(tr.batch_size, n)
    steps_per_epoch = _steps_per_epoch(n, tr.batch_size)
    opt = _optimizer(spec, distiller.trainable_parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(tr.lr_schedule, steps_per_epoch * tr.epochs, steps_per_epoch, tr.epochs))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    history: list[dict[str, Any]] = []
    start_epoch = 0
    if state.get("phase") == phase and "student" in state:
        distiller.load_state_dict(state["student"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history, start_epoch = list(state["history"]), int(state["epoch"])
        on_event("log", {"message": f"resumed {phase} from its epoch {start_epoch} checkpoint"})
    on_event("phase", {"phase": phase, "method": method, "epochs": tr.epochs, "start_epoch": start_epoch,
                       "steps_per_epoch": steps_per_epoch, "device": str(device), "precision": precision})

    for epoch in range(start_epoch, tr.epochs):
        distiller.train()
        t0 = time.perf_counter()
        gen = torch.Generator(device="cpu").manual_seed(tr.seed * 100003 + epoch)
        order = torch.randperm(n, generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)  # accumulated on device: no host sync per step
        term_sums: dict[str, torch.Tensor] = {}
        for i in range(steps_per_epoch):
            frac_epoch = epoch + i / steps_per_epoch
            if should_stop():
                raise Cancelled()
            idx = order[i * bs:(i + 1) * bs]
            x, y = data.x_train[idx], data.y_train[idx]
            if spec.dataset.augment == "standard":
                x = augment_batch(x, info, gen if device.type == "cpu" else None)
            if device.type == "cuda" and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, precision):
                _, terms = distiller.forward_train(x, y, frac_epoch)
                loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += loss.detach()
            for k, v in terms.items():
                term_sums[k] = term_sums.get(k, torch.zeros((), device=device)) + v.detach()
            if progress.step():
                cur = loss.item()  # the only host sync inside the epoch, twice a second at most
                _check_finite(cur, epoch)
                progress.emit(phase=phase, epoch=epoch + 1, epochs=tr.epochs, loss=round(cur, 6),
                              lr=sched.get_last_lr()[0])
        seconds = time.perf_counter() - t0
        train_loss = loss_sum.item() / steps_per_epoch
        _check_finite(train_loss, epoch)
        t1 = time.perf_counter()
        ev = evaluate(distiller.student, data.x_test, data.y_test, device, precision)
        row = {"epoch": epoch + 1, "train_loss": round(train_loss, 6), "test_top1": ev["top1"],
               "test_loss": ev["loss"], "seconds": round(seconds, 3),
               "eval_seconds": round(time.perf_counter() - t1, 3),
               "losses": {k: round(v.item() / steps_per_epoch, 6) for k, v in term_sums.items()}}
        if method != "none":
            t_now, a_now = distiller.coefficients(epoch + 0.5)  # mid-epoch values, for the curves
            row.update(temperature=round(t_now, 6), alpha=round(a_now, 6))
        history.append(row)
        on_event("epoch", {"phase": phase, **row, "epochs": tr.epochs})
        # the whole distiller: the student plus a method's own modules (regressors, the DML peer)
        state.update(phase=phase, epoch=epoch + 1, student=distiller.state_dict(),
                     optimizer=opt.state_dict(), scheduler=sched.state_dict(), history=history)
        _save_checkpoint(ckpt_path, state)
    state["history"] = history
    return distiller


def _build_distiller(method: str, spec: JobSpec, student: nn.Module, teachers: list[Teacher], data: TensorData,
                     device: torch.device) -> Distiller:
    """The method around the student, set up from a dry run on a few training samples (feature layers
    found, regressors sized) before the optimizer sees its parameters."""
    d, info = spec.distillation, data.info
    extra: dict[str, Any] = {}
    if method == "dml":
        arch = d.params.get("peer_architecture") or spec.student.architecture
        kw = d.params.get("peer_kwargs")
        kw = dict(spec.student.kwargs if kw is None and arch == spec.student.architecture else kw or {})
        kw = validate_model_kwargs(arch, kw, num_classes=info.num_classes, in_channels=info.in_channels)
        extra["peer"] = create_model(arch, num_classes=info.num_classes, in_channels=info.in_channels,
                                     input_size=info.image_size, **kw).to(device)
    modules = [t.module for t in teachers] if method != "none" else []
    weights = [t.weight for t in spec.teachers] if modules else None
    distiller: Distiller = METHODS.create(method, student, modules, d.temperature, d.alpha, d.params,
                                          teacher_weights=weights, schedule=d.schedule, epochs=spec.training.epochs,
                                          **extra)
    try:
        distiller.setup(data.x_train[:min(64, data.x_train.shape[0])])
    except (FeatureError, ValueError) as e:
        raise JobError("bad_params", f"method {method!r}: {e}") from e
    return distiller.to(device)


def run(spec: JobSpec, data: TensorData, teachers: list[Teacher], workdir: Path,
        on_event: EventFn = lambda kind, data: None, should_stop: Callable[[], bool] = lambda: False,
        ) -> dict[str, Any]:
    """Run a whole job; returns the report (also written to workdir/report.json)."""
    wall0 = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = workdir / CHECKPOINT
    device = resolve_device(spec.resources.device)
    precision = resolve_precision(spec.resources.precision, device)
    torch.manual_seed(spec.training.seed)
    data = data.to(device)
    info = data.info
    method = spec.distillation.method
    for t in teachers:
        t.module.to(device)
    probe = data.x_train[:2]
    for t in teachers:
        _probe(t.module, probe, t.label, info.num_classes)

    state: dict[str, Any] = {}
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
    done: dict[str, Any] = state.setdefault("done", {})

    phases = [("distill", method)] + ([("baseline", "none")] if spec.baseline else [])
    steps_per_epoch = _steps_per_epoch(data.x_train.shape[0], spec.training.batch_size)
    total_steps = steps_per_epoch * spec.training.epochs * len(phases)
    done_steps = sum(steps_per_epoch * spec.training.epochs for p, _ in phases if p in done)
    if state.get("phase") and state["phase"] not in done:
        done_steps += steps_per_epoch * int(state.get("epoch", 0))
    progress = _Progress(on_event, total_steps, done_steps)

    teacher_preds = None
    if teachers:
        distiller = METHODS.create(method, nn.Identity(), [t.module for t in teachers],
                                   spec.distillation.temperature, spec.distillation.alpha, spec.distillation.params,
                                   teacher_weights=[t.weight for t in spec.teachers])
        t_eval = evaluate(distiller.teacher_logits, data.x_test, data.y_test, device, precision)
        teacher_preds = t_eval.pop("preds")
        done.setdefault("teacher", t_eval)

    for phase, phase_method in phases:
        if phase in done:
            continue
        distiller = _train_phase(phase, phase_method, spec, data, teachers, device, precision, state, ckpt_path,
                                 progress, on_event, should_stop)
        student = distiller.student
        ev = evaluate(student, data.x_test, data.y_test, device, precision)
        preds = ev.pop("preds")
        result: dict[str, Any] = {"top1": ev["top1"], "top5": ev["top5"], "epochs": state.pop("history")}
        if phase == "distill":
            size = save_student(student, workdir / "student.safetensors", architecture=spec.student.architecture,
                                kwargs=spec.student.kwargs, dataset=info,
                                extra={"method": method, "test_top1": ev["top1"], "seed": spec.training.seed})
            result.update(params=count_params(student), size_bytes=size)
            if teacher_preds is not None:
                result["agreement"] = round(float((preds == teacher_preds).float().mean().item()), 6)
            for name, model in distiller.extra_students().items():  # the DML peer
                arch = spec.distillation.params.get("peer_architecture") or spec.student.architecture
                kw = spec.distillation.params.get("peer_kwargs")
                kw = spec.student.kwargs if kw is None and arch == spec.student.architecture else kw or {}
                e2 = evaluate(model, data.x_test, data.y_test, device, precision)
                e2.pop("preds")
                size2 = save_student(model, workdir / f"{name}.safetensors", architecture=arch, kwargs=kw,
                                     dataset=info, extra={"method": method, "test_top1": e2["top1"],
                                                          "seed": spec.training.seed})
                result[name] = {"architecture": arch, "top1": e2["top1"], "top5": e2["top5"],
                                "params": count_params(model), "size_bytes": size2}
        done[phase] = result
        for k in ("phase", "epoch", "student", "optimizer", "scheduler"):
            state.pop(k, None)
        _save_checkpoint(ckpt_path, state)

    report = build_report(spec, done, teachers, device, precision, time.time() - wall0)
    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    plot_curves(report, workdir / "curves.png")
    on_event("log", {"message": f"student top1 {report['student']['top1']:.4f}"})
    return report


def build_report(spec: JobSpec, done: dict[str, Any], teachers: list[Teacher], device: torch.device,
                 precision: str, wall_seconds: float) -> dict[str, Any]:
    s = done["distill"]
    report: dict[str, Any] = {
        "method": spec.distillation.method, "dataset": spec.dataset.name,
        "student": {"architecture": spec.student.architecture, "top1": s["top1"], "top5": s["top5"],
                    "params": s["params"], "size_bytes": s["size_bytes"]},
    }
    for name in ("peer",):
        if name in s:
            report[name] = s[name]
    if teachers:
        t_params = [t.params for t in teachers]
        params = sum(p for p in t_params if p) if all(t_params) else None
        sizes = [t.size_bytes for t in teachers]
        report["teacher"] = {**done["teacher"], "params": params,
                             "size_bytes": sum(sizes) if all(sizes) else None}
        if len(teachers) > 1:
            report["teacher"]["count"] = len(teachers)
            report["teacher"]["weights"] = [t.weight for t in spec.teachers]
        report["agreement"] = s["agreement"]
        report["compression"] = round(params / s["params"], 4) if params else None
        report["temperature"] = spec.distillation.temperature
        report["alpha"] = spec.distillation.alpha
    if "baseline" in done:
        b = done["baseline"]
        report["baseline"] = {"top1": b["top1"], "top5": b["top5"], "epochs": b["epochs"]}
        report["kd_gain"] = round(s["top1"] - b["top1"], 6)
    report["epochs"] = s["epochs"]
    report.update(device=device.type, precision=precision, seed=spec.training.seed,
                  wall_seconds=round(wall_seconds, 3))
    return report
