"""The one distillation loop: CPU and CUDA on the same path, seeded, checkpointed every epoch.

`run()` trains the student with the chosen method (and, with `baseline: true`, the same student again
on labels alone), evaluates after every epoch, writes `checkpoint.pt` after every epoch so that a
re-delivered job resumes where it stopped, and finally writes `student.safetensors`, `report.json` and
`curves.png` into the work directory. Progress leaves only through `on_event`; cancellation enters
only through `should_stop()`.
"""
from __future__ import annotations

import functools
import io
import json
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.checkpoints import save_student
from kdcore.datasets import TensorData, augment_batch
from kdcore.divergence import check_divergence
from kdcore.errors import Cancelled, Diverged, FeatureError, JobError
from kdcore.evaluate import evaluate, score
from kdcore.losses import teacher_log_probs
from kdcore.methods import METHODS, Distiller, TeacherOutput
from kdcore.models import count_params, create_model, validate_model_kwargs
from kdcore.report import plot_curves
from kdcore.spec import JobSpec
from kdcore.teacher_cache import (
    DEFAULT_MAX_BYTES,
    OFF_AUGMENT,
    OFF_DISABLED,
    CacheResult,
    TeacherCache,
    module_digest,
    module_signature,
)

EventFn = Callable[[str, dict[str, Any]], None]
CHECKPOINT = "checkpoint.pt"
PROGRESS_EVERY_S = 0.5  # progress events at most twice a second: enough for a bar, cheap for Redis


@dataclass
class Teacher:
    module: nn.Module
    params: int | None = None
    size_bytes: int | None = None
    label: str = "teacher"
    # sha256 of the file the weights came from (upload or earlier job's student): names the teacher in the
    # teacher-output cache key; without it the weights themselves are hashed
    checksum: str | None = None

    def cache_id(self) -> str | None:
        """Identity for the teacher-output cache: checksum (or weight digest) plus architecture signature;
        None for a module with no checksum and no weights to hash (its outputs are cached for one job only)."""
        sig = module_signature(self.module)
        if self.checksum:
            return f"{self.checksum}:{sig}"
        if not any(isinstance(t, torch.Tensor) for t in self.module.state_dict().values()):
            return None
        return f"weights-{module_digest(self.module)}:{sig}"


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


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 dot products (AVX-512 BF16 or AMX): there a bf16 matmul runs about twice
    as fast as fp32 (measured on an AMD EPYC with avx512_bf16: 195 against 83 GFLOP/s); elsewhere it is
    emulated and hundreds of times slower."""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def resolve_teacher_precision(requested: str, device: torch.device, precision: str) -> str:
    """The teacher only infers, so with precision auto it may run in bf16 where the student trains in fp32:
    on CPUs with native bf16 its forward takes half the time, and its soft targets move by about 0.4 % of
    the largest logit, far below what changes a student (docs/benchmarks.md compares the accuracies)."""
    if requested == "auto" and device.type == "cpu" and precision == "fp32" and cpu_has_fast_bf16():
        return "bf16"
    return precision


def _autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    # fp32: no autocast object at all (entering a disabled one still costs per step)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def sane_threads() -> int:
    """Caps torch's intra-op threads at the CPUs this process may use (affinity and cgroup quota).

    torch sizes its pool from the host's cores; in a container limited to fewer CPUs the extra OpenMP
    threads wait on each other at every small matmul, which costs far more than they bring. KD_TORCH_THREADS
    sets the count outright (1 on a machine whose cores other processes keep busy: see docs/benchmarks.md).
    """
    if os.environ.get("KD_TORCH_THREADS", "").isdigit() and int(os.environ["KD_TORCH_THREADS"]) > 0:
        torch.set_num_threads(int(os.environ["KD_TORCH_THREADS"]))  # the operator's choice wins
        return torch.get_num_threads()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    if torch.get_num_threads() > cpus:
        torch.set_num_threads(cpus)
    return torch.get_num_threads()


def _lr_lambda(kind: str, total_steps: int, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    if kind == "cosine":
        return lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / max(1, total_steps)))
    if kind == "step":
        marks = [int(epochs * 0.5) * steps_per_epoch, int(epochs * 0.75) * steps_per_epoch]
        return lambda s: 0.1 ** sum(s >= m for m in marks if m > 0)
    return lambda s: 1.0


def _optimizer(spec: JobSpec, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    t = spec.training
    # fused: one kernel for all parameters instead of several small ops per parameter (CPU and CUDA)
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                               nesterov=t.momentum > 0, fused=fused or None)
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=t.lr, weight_decay=t.weight_decay, fused=fused or None)


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
    buf = io.BytesIO()
    torch.save(state, buf)  # serialized first: torch's own file writer turns a full disk into an opaque error
    with open(tmp, "wb") as f:  # ... while Python's raises OSError(ENOSPC), which the worker reports as disk_full
        f.write(buf.getbuffer())
        f.flush()
        os.fsync(f.fileno())
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


def _teacher_cache_for_phase(distiller: Distiller, spec: JobSpec, data: TensorData, teachers: list[Teacher],
                             device: torch.device, precision: str, cache: TeacherCache | None,
                             on_event: EventFn, should_stop: Callable[[], bool]) -> CacheResult | None:
    """The teachers' outputs over the whole train split when their input is deterministic; None for a
    method without teachers. Its seconds count toward the first epoch trained (DESIGN.md)."""
    if not distiller.teachers:
        return None
    if cache is None:
        res = CacheResult(None, OFF_DISABLED)
    elif spec.dataset.augment != "none":
        res = CacheResult(None, OFF_AUGMENT)
    else:
        ids = [t.cache_id() for t in teachers]
        if any(i is None for i in ids):  # an unnamed weightless module: keep its outputs for this job only
            cache = TeacherCache(None, cache.max_bytes)
        res = cache.outputs(distiller, data.x_train, [i or "" for i in ids], device, precision,
                            should_stop=should_stop)
    on_event("log", {"message": f"teacher cache: {res.status}" + (f" in {res.seconds:.2f} s" if res.output else "")})
    return res


def _compile_student(student: nn.Module, on: bool) -> str:
    if not on:
        return "off"
    try:
        student.compile()  # in place: state_dict keys stay those of the eager module (checkpoints, files)
    except Exception as e:  # torch.compile unavailable on this platform
        return f"failed ({type(e).__name__}: {e}); eager"
    return "on"


def _uncompile(student: nn.Module) -> None:
    student._compiled_call_impl = None  # what nn.Module.compile() set; eager from the next call on


def _train_phase(phase: str, method: str, spec: JobSpec, data: TensorData, teachers: list[Teacher],
                 device: torch.device, precision: str, state: dict[str, Any], ckpt_path: Path,
                 progress: _Progress, on_event: EventFn, should_stop: Callable[[], bool],
                 cache: TeacherCache | None = None) -> nn.Module:
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
    if start_epoch >= tr.epochs:
        state["history"] = history
        return distiller
    t_cache = time.perf_counter()
    t_precision = resolve_teacher_precision(spec.resources.precision, device, precision)
    cached = _teacher_cache_for_phase(distiller, spec, data, teachers, device, t_precision, cache, on_event,
                                      should_stop)
    if cached is not None:
        state["teacher_cache"], state["teacher_precision"] = cached.status, t_precision
    t_out_all: TeacherOutput | None = cached.output if cached else None
    # per step, a teacher in another precision than the student runs apart, under its own autocast
    teacher_apart = bool(distiller.teachers) and t_out_all is None and t_precision != precision
    pending_s = time.perf_counter() - t_cache  # counted in the first epoch trained: it is done for it
    compiled = _compile_student(distiller.student, spec.resources.compile)
    if compiled.startswith("failed"):
        on_event("log", {"message": f"torch.compile {compiled}"})
    state["compile"] = compiled
    augment, channels_last = spec.dataset.augment == "standard", device.type == "cuda" and data.x_train.ndim == 4
    x_all, y_all = data.x_train, data.y_train
    names: list[str] = []  # the method's loss terms, in the order of the stacked values

    def step(idx: torch.Tensor, gen: torch.Generator, frac_epoch: float) -> torch.Tensor:
        """One optimizer step on the samples idx; returns the detached loss terms, stacked (no host sync)."""
        x, y = x_all.index_select(0, idx), y_all.index_select(0, idx)
        if augment:
            x = augment_batch(x, info, gen if device.type == "cpu" else None)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t_out = t_out_all.index(idx) if t_out_all is not None else None
        if teacher_apart:
            with _autocast(device, t_precision):
                t_out = distiller.teacher_forward(x)
        with _autocast(device, precision):
            _, terms = distiller.forward_train(x, y, frac_epoch, t_out)
            if not names:
                names.extend(terms)
            stacked = torch.stack([v.float() for v in terms.values()])
            loss = stacked.sum()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        return stacked.detach()

    for epoch in range(start_epoch, tr.epochs):
        distiller.train()
        t0 = time.perf_counter()
        gen = torch.Generator(device="cpu").manual_seed(tr.seed * 100003 + epoch)
        order = torch.randperm(n, generator=gen).to(device)
        term_sums: torch.Tensor | None = None  # accumulated on device: no host sync per step
        for i in range(steps_per_epoch):
            if should_stop():
                raise Cancelled()
            idx = order[i * bs:(i + 1) * bs]
            frac_epoch = epoch + i / steps_per_epoch
            if compiled == "on" and i == 0 and epoch == start_epoch:
                try:  # the first call compiles; a compiler that fails must not fail the job
                    terms = step(idx, gen, frac_epoch)
                except Exception as e:
                    _uncompile(distiller.student)
                    compiled = state["compile"] = f"failed ({type(e).__name__}: {str(e)[:200]}); eager"
                    on_event("log", {"message": f"torch.compile {compiled}"})
                    opt.zero_grad(set_to_none=True)
                    terms = step(idx, gen, frac_epoch)
            else:
                terms = step(idx, gen, frac_epoch)
            term_sums = terms.clone() if term_sums is None else term_sums.add_(terms)
            if progress.step():
                cur = terms.sum().item()  # the only host sync inside the epoch, twice a second at most
                _check_finite(cur, epoch)
                progress.emit(phase=phase, epoch=epoch + 1, epochs=tr.epochs, loss=round(cur, 6),
                              lr=sched.get_last_lr()[0])
        seconds = time.perf_counter() - t0 + pending_s
        pending_s = 0.0
        sums = term_sums.tolist() if term_sums is not None else []
        train_loss = sum(sums) / steps_per_epoch
        _check_finite(train_loss, epoch)
        t1 = time.perf_counter()
        ev = evaluate(distiller.student, data.x_test, data.y_test, device, precision)
        row = {"epoch": epoch + 1, "train_loss": round(train_loss, 6), "test_top1": ev["top1"],
               "test_loss": ev["loss"], "seconds": round(seconds, 3),
               "eval_seconds": round(time.perf_counter() - t1, 3),
               "losses": {k: round(v / steps_per_epoch, 6) for k, v in zip(names, sums, strict=False)}}
        if method != "none":
            t_now, a_now = distiller.coefficients(epoch + 0.5)  # mid-epoch values, for the curves
            row.update(temperature=round(t_now, 6), alpha=round(a_now, 6))
        history.append(row)
        on_event("epoch", {"phase": phase, **row, "epochs": tr.epochs})
        try:  # a finite loss can still diverge: the student falls to chance (kdcore.divergence)
            check_divergence(history, info.num_classes, tr.lr,
                             spec.distillation.temperature if method != "none" else None,
                             teacher_top1=(state.get("done") or {}).get("teacher", {}).get("top1")
                             if method != "none" else None)
        except Diverged as e:
            raise JobError("diverged", str(e)) from None
        # the whole distiller: the student plus a method's own modules (regressors, the DML peer)
        state.update(phase=phase, epoch=epoch + 1, student=distiller.state_dict(),
                     optimizer=opt.state_dict(), scheduler=sched.state_dict(), history=history)
        _save_checkpoint(ckpt_path, state)
    state["history"] = history
    return distiller


def _peer_model(spec: JobSpec) -> tuple[str, dict[str, Any]]:
    """DML's second student: (architecture, kwargs), defaulting to the student's own."""
    p = spec.distillation.params
    arch = p.get("peer_architecture") or spec.student.architecture
    kw = p.get("peer_kwargs")
    return arch, dict(spec.student.kwargs if kw is None and arch == spec.student.architecture else kw or {})


def _build_distiller(method: str, spec: JobSpec, student: nn.Module, teachers: list[Teacher], data: TensorData,
                     device: torch.device) -> Distiller:
    """The method around the student, set up from a dry run on a few training samples (feature layers
    found, regressors sized) before the optimizer sees its parameters."""
    d, info = spec.distillation, data.info
    extra: dict[str, Any] = {}
    if method == "dml":
        arch, kw = _peer_model(spec)
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


def _teacher_test_logits(distiller: Distiller, data: TensorData, teachers: list[Teacher], device: torch.device,
                         precision: str, cache: TeacherCache | None) -> torch.Tensor:
    """The teachers' joint logits on the test split (cached like the train split: a sweep evaluates its
    teacher once)."""
    ids = [t.cache_id() for t in teachers]
    if cache is None or any(i is None for i in ids):
        cache = TeacherCache(None)
    z = cache.outputs(distiller, data.x_test, [i or "" for i in ids], device, precision,
                      with_features=False).output
    assert z is not None
    return z.logits[0] if z.logits.shape[0] == 1 else teacher_log_probs(z.logits, 1.0, distiller.teacher_weights)


def run(spec: JobSpec, data: TensorData, teachers: list[Teacher], workdir: Path,
        on_event: EventFn = lambda kind, data: None, should_stop: Callable[[], bool] = lambda: False,
        cache_dir: Path | None = None, teacher_cache: bool = True, cache_max_bytes: int = DEFAULT_MAX_BYTES,
        ) -> dict[str, Any]:
    """Run a whole job; returns the report (also written to workdir/report.json).

    Teacher outputs are computed once per job when the teacher's input is deterministic, and kept under
    `cache_dir` for later jobs on the same teacher and data (kdcore.teacher_cache); `teacher_cache=False`
    runs the teacher at every step instead. Features above `cache_max_bytes` are not cached.
    """
    wall0 = time.time()
    sane_threads()
    cache = TeacherCache(cache_dir, cache_max_bytes) if teacher_cache else None
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
        t_eval = score(_teacher_test_logits(distiller, data, teachers, device, precision, cache), data.y_test)
        teacher_preds = t_eval.pop("preds")
        done.setdefault("teacher", t_eval)

    for phase, phase_method in phases:
        if phase in done:
            continue
        distiller = _train_phase(phase, phase_method, spec, data, teachers, device, precision, state, ckpt_path,
                                 progress, on_event, should_stop, cache)
        student = distiller.student
        ev = evaluate(student, data.x_test, data.y_test, device, precision)
        preds = ev.pop("preds")
        result: dict[str, Any] = {"top1": ev["top1"], "top5": ev["top5"], "epochs": state.pop("history")}
        for k in ("teacher_cache", "teacher_precision", "compile"):
            if k in state:
                result[k] = state.pop(k)
        if phase == "distill":
            size = save_student(student, workdir / "student.safetensors", architecture=spec.student.architecture,
                                kwargs=spec.student.kwargs, dataset=info,
                                extra={"method": method, "test_top1": ev["top1"], "seed": spec.training.seed})
            result.update(params=count_params(student), size_bytes=size)
            if teacher_preds is not None:
                result["agreement"] = round(float((preds == teacher_preds).float().mean().item()), 6)
            for name, model in distiller.extra_students().items():  # the DML peer
                arch, kw = _peer_model(spec)
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
        # which path the teacher took: "built" / "hit" (outputs computed once, reused every epoch) or
        # "off (augmentation)" etc. (teacher run at every step)
        report["teacher_cache"] = s.get("teacher_cache")
        report["teacher_precision"] = s.get("teacher_precision", precision)
    if "baseline" in done:
        b = done["baseline"]
        report["baseline"] = {"top1": b["top1"], "top5": b["top5"], "epochs": b["epochs"]}
        report["kd_gain"] = round(s["top1"] - b["top1"], 6)
    report["epochs"] = s["epochs"]
    report.update(device=device.type, precision=precision, compile=s.get("compile", "off"),
                  seed=spec.training.seed, wall_seconds=round(wall_seconds, 3))
    return report
