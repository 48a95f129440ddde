"""What a worker does with one job id: lease, load, train through kdcore, store the outcome.

A job runs only under its lease (SET NX with expiry). While it runs, a watcher thread renews the
lease and reads the cancel flag twice a second; `should_stop()` reads the watcher's answer, so the
training loop pays nothing per step for it. A second delivery of the same job while the lease lives
returns at once; one after the lease lapsed (its worker died) resumes from the last epoch checkpoint.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from kdcore.checkpoints import load_teacher
from kdcore.datasets import Data, DatasetInfo, load_dataset
from kdcore.datasets.store import PreparedData, PreparedStore
from kdcore.digests import file_sha256
from kdcore.errors import (
    Cancelled,
    CheckpointError,
    DatasetError,
    JobError,
    OutOfMemory,
    UnknownNameError,
)
from kdcore.export_phase import run_export
from kdcore.hardware import resolve_device
from kdcore.oom import with_oom_retry
from kdcore.spec import JobSpec, TeacherInput, TeacherSpec
from kdcore.teacher_io import TeacherIO, dry_run
from kdcore.train import CHECKPOINT, Teacher, run
from worker.artifacts import ArtifactStore
from worker.config import WorkerSettings, get_settings
from worker.heartbeat import beat_while_busy
from worker.lifecycle import TERMINAL, Lifecycle, Send, Status
from worker.preparation import LockedPreparer, Preparations
from worker.storage import Storage
from worker.store import JobStore, now_iso

log = logging.getLogger("distillery.worker")
LEASED_ELSEWHERE = "leased elsewhere"


class _Watcher(threading.Thread):
    """Renews the lease and polls the cancel flag, off the training thread."""

    def __init__(self, store: JobStore, job_id: str, token: str, ttl_s: int, worker_heartbeat_s: float):
        super().__init__(daemon=True, name=f"watch-{job_id}")
        self.store, self.job_id, self.token, self.ttl_s = store, job_id, token, ttl_s
        self.heartbeat_s = worker_heartbeat_s
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        last_renew = time.monotonic()
        while not self.done.wait(0.5):
            try:
                if self.store.cancel_requested(self.job_id):
                    self.cancel.set()
                if time.monotonic() - last_renew > self.ttl_s / 3:
                    if not self.store.renew_lease(self.job_id, self.token, self.ttl_s):
                        self.lost.set()  # another worker owns the job now: stop, do not write results
                    last_renew = time.monotonic()
                beat_while_busy(self.store, self.heartbeat_s)  # a solo-pool worker's event loop is blocked by this job
            except Exception as e:  # Redis away for a moment: keep training, try again next tick
                log.warning("watcher for %s: %s", self.job_id, e)

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.lost.is_set()


def _teacher(store: JobStore, arts: ArtifactStore, t: TeacherSpec, tenant: str, info: DatasetInfo,
             device: torch.device, label: str) -> Teacher:
    # a registry architecture is built for what its adapter (teacher.input) gives it, not the dataset's input
    takes = t.input or TeacherInput()
    channels = takes.channels or info.in_channels
    input_size: tuple[int, int] = (int(takes.size[0]), int(takes.size[1])) if takes.size else info.image_size
    if t.job is not None:
        rec = store.get_job(t.job, tenant)
        path = arts.job_output(t.job, "student.safetensors") if rec else None
        if rec is None or rec["status"] != Status.SUCCEEDED or path is None:
            raise JobError("teacher_unavailable", f"teacher job {t.job} has no student (status "
                           f"{rec['status'] if rec else 'unknown'})")
        module = load_teacher(path, "safetensors", architecture=None, kwargs={}, num_classes=info.num_classes,
                              in_channels=channels, input_size=input_size, device=device)
        size = path.stat().st_size
        params = (rec.get("report") or {}).get("student", {}).get("params")
        checksum = file_sha256(path)
    else:
        art = store.get_artifact(t.checkpoint or "", tenant)
        if art is None:
            raise JobError("teacher_unavailable", f"teacher artifact {t.checkpoint} not found")
        path = arts.local_upload(art)
        module = load_teacher(path, art["format"], architecture=t.architecture, kwargs=t.kwargs,
                              num_classes=info.num_classes, in_channels=channels, input_size=input_size,
                              device=device)
        size = int(art["size"])
        params = (art.get("meta") or {}).get("params")
        checksum = art.get("sha256") or file_sha256(path)
    if params is None:
        params = sum(p.numel() for p in module.parameters()) or None
    wrapped = TeacherIO(module, info, t.input, t.outputs, label).to(device)
    return Teacher(module=wrapped, params=params, size_bytes=size, label=label, checksum=checksum,
                   io=wrapped.identity())


def _load_data(store: JobStore, arts: ArtifactStore, spec: JobSpec, tenant: str, settings: WorkerSettings,
               on_event: Callable[[str, dict[str, Any]], None], should_stop: Callable[[], bool]) -> Data:
    """The job's dataset. An uploaded image folder is decoded once into the prepared-dataset store (a
    visible `prepare` phase with progress events, skipped when an earlier job prepared the same upload;
    under the store key's lock, so a job whose upload another worker is preparing waits and reuses it)
    and read from disk batch by batch; the small built-ins are loaded whole."""
    path, sha = None, None
    if spec.dataset.artifact:
        art = store.get_artifact(spec.dataset.artifact, tenant)
        if art is None:
            raise JobError("dataset_unavailable", f"dataset artifact {spec.dataset.artifact} not found")
        path, sha = arts.local_upload(art), art.get("sha256")
    last = [0.0]

    def on_progress(done: int, total: int) -> None:
        if done == 0 or done == total or time.monotonic() - last[0] >= 0.5:  # twice a second at most
            last[0] = time.monotonic()
            on_event("progress", {"phase": "prepare", "step": done, "steps": total,
                                  "fraction": round(done / max(1, total), 4)})

    prepared = LockedPreparer(PreparedStore(settings.prepared), Preparations(store, settings.lease_ttl_s),
                              artifact=spec.dataset.artifact, fmt=spec.dataset.name, should_stop=should_stop,
                              storage=arts.storage,
                              on_wait=lambda: on_event("log", {"message": "another worker is preparing this "
                                                               "dataset; waiting for it"}))
    t0 = time.monotonic()
    size = tuple(spec.dataset.image_size) if spec.dataset.image_size else None
    data = load_dataset(spec.dataset.name, settings.datasets, path, download=settings.allow_download,
                        store=prepared, image_size=size, channels=spec.dataset.channels,  # type: ignore[arg-type]
                        on_progress=on_progress, source_sha256=sha)
    if isinstance(data, PreparedData):
        on_event("log", {"message": f"prepared dataset {data.key[:12]} ({len(data.train)} train, {len(data.test)} "
                         f"test images at {data.info.image_size[0]}x{data.info.image_size[1]}) ready in "
                         f"{time.monotonic() - t0:.1f} s"})
    return data


def execute(job_id: str, settings: WorkerSettings | None = None, store: JobStore | None = None,
            send: Send | None = None) -> str:
    """Runs one job to an end state; returns what happened (for the Celery log). `send` puts a job id on
    a queue (worker/broker.py): with it, jobs waiting for this one are sent as soon as it ends."""
    settings = settings or get_settings()
    store = store or JobStore.from_url(settings.redis)
    lifecycle = Lifecycle(store, send)
    arts = ArtifactStore(settings.artifacts, Storage(settings.storage_url))
    rec = store.get_job(job_id)
    if rec is None:
        log.warning("job %s: no record; dropping the message", job_id)
        return "unknown"
    if rec["status"] in TERMINAL:
        return f"already {rec['status']}"
    token = store.acquire_lease(job_id, settings.lease_ttl_s)
    if token is None:
        log.info("job %s: lease held by another delivery; not running it twice", job_id)
        return LEASED_ELSEWHERE
    watcher = _Watcher(store, job_id, token, settings.lease_ttl_s, settings.worker_heartbeat_s)
    try:
        if rec["cancel"]:
            lifecycle.stopped(job_id)
            return Status.CANCELLED
        attempt = store.incr_attempts(job_id)
        if attempt > settings.max_attempts:
            lifecycle.fail(job_id, "worker_lost", f"the job's worker died {attempt - 1} times; giving up after "
                           f"{settings.max_attempts} attempts")
            return Status.FAILED
        fields: dict[str, Any] = {} if rec.get("started_at") else {"started_at": now_iso()}
        fields["worker"] = f"{socket.gethostname()}:{os.getpid()}"  # the process running this attempt (operators)
        if not lifecycle.start(job_id, **fields):
            return "not runnable"
        if attempt > 1:
            store.add_event(job_id, "log", {"message": f"attempt {attempt}: resuming after a lost worker"})
        watcher.start()
        outcome = _run(job_id, rec, lifecycle, arts, settings, watcher)
        if send is not None:
            _release_dependents(lifecycle)
        return outcome
    finally:
        watcher.done.set()
        if watcher.is_alive():  # let a renewal in flight finish first: it would take the lease back after the release
            watcher.join(timeout=5)
        store.release_lease(job_id, token)


def _release_dependents(lifecycle: Lifecycle) -> None:
    """Jobs waiting for this one (it was their teacher) start now rather than at the next heartbeat."""
    try:
        lifecycle.release_waiting()
    except Exception as e:  # the heartbeat's sweep will do it
        log.warning("releasing waiting jobs: %s", e)


def _run(job_id: str, rec: dict[str, Any], lifecycle: Lifecycle, arts: ArtifactStore, settings: WorkerSettings,
         watcher: _Watcher) -> str:
    tenant, store = rec["tenant"], lifecycle.store

    def on_event(kind: str, data: dict[str, Any]) -> None:
        store.add_event(job_id, kind, data)
        if kind == "progress":
            store.set_fields(job_id, progress=data)
        elif kind == "epoch":
            store.set_fields(job_id, metrics={k: v for k, v in data.items() if k != "epochs"})

    try:
        spec = JobSpec.model_validate(rec["spec"])
        device = resolve_device(spec.resources.device, settings.worker_device)
        data = _load_data(store, arts, spec, tenant, settings, on_event, watcher.should_stop)
        teachers = [_teacher(store, arts, t, tenant, data.info, device, f"teacher {i}" if i else "teacher")
                    for i, t in enumerate(spec.teachers)]
        for t in teachers:  # before anything else runs: a teacher that cannot run fails as teacher_error now
            dry_run(t.module, data.train.head(1).to(device))
            if t.io:
                on_event("log", {"message": f"{t.label} input/outputs adapted: {t.io}"})
        workdir = arts.job_dir(job_id)

        def on_oom_retry(old: int, new: int) -> None:
            # the epoch checkpoint counts steps of the larger batch: the run restarts from its beginning
            (workdir / CHECKPOINT).unlink(missing_ok=True)
            on_event("log", {"level": "warning", "message": f"CUDA out of memory at batch size {old}; "
                             f"retrying once from the start with batch size {new}"})

        def train(batch_size: int) -> dict[str, Any]:
            s = spec if batch_size == spec.training.batch_size else spec.model_copy(
                update={"training": spec.training.model_copy(update={"batch_size": batch_size})})
            return run(s, data, teachers, workdir, on_event, watcher.should_stop, device=device,
                       threads=settings.torch_threads, cache_dir=settings.cache,
                       cache_max_bytes=settings.teacher_cache_max_bytes)

        report = with_oom_retry(train, spec.training.batch_size, on_oom_retry)
        if spec.export is not None:
            report["export"] = run_export(spec.export, workdir, data.test, [t.module for t in teachers], device,
                                          on_event, watcher.should_stop, report["student"]["top1"],
                                          settings.torch_threads)
            (workdir / "report.json").write_text(json.dumps(report, indent=2))
    except Cancelled:
        if watcher.lost.is_set():
            log.warning("job %s: lease lost to another worker; leaving the job to it", job_id)
            return "lease lost"
        lifecycle.stopped(job_id)
        arts.drop_job_scratch(job_id)
        return Status.CANCELLED
    except (JobError, CheckpointError, DatasetError, UnknownNameError) as e:
        code = getattr(e, "code", None) or {CheckpointError: "bad_checkpoint", DatasetError: "bad_dataset"}.get(
            type(e), "invalid")
        _fail(lifecycle, arts, job_id, code, getattr(e, "message", None) or str(e))
        return Status.FAILED
    except OutOfMemory as e:
        _fail(lifecycle, arts, job_id, "cuda_oom", str(e))
        return Status.FAILED
    except torch.cuda.OutOfMemoryError as e:  # outside training (loading a teacher, evaluating it)
        _fail(lifecycle, arts, job_id, "cuda_oom", f"CUDA out of memory; lower training.batch_size ({e})")
        return Status.FAILED
    except Exception as e:
        if _disk_full(e):
            log.error("job %s: disk full: %s", job_id, e)
            _fail(lifecycle, arts, job_id, "disk_full", f"no space left on the device holding the job's files "
                  f"({arts.job_dir(job_id)}): free space there (or set KD_ARTIFACT_DIR to a larger disk) and "
                  f"submit the job again ({e})")
            return Status.FAILED
        log.exception("job %s crashed", job_id)
        _fail(lifecycle, arts, job_id, "internal", f"{type(e).__name__}: {e}")
        return Status.FAILED
    try:
        arts.publish_job(job_id)  # a shared storage holds the outputs before the job reads succeeded
    except Exception as e:  # the outputs exist on this host only: no other host could download them
        log.exception("job %s: publishing its outputs", job_id)
        _fail(lifecycle, arts, job_id, "storage_unavailable", f"the job's outputs could not be written to the "
              f"shared storage (KD_STORAGE_URL): {type(e).__name__}: {e}; submit the job again")
        return Status.FAILED
    store.set_fields(job_id, progress={**(store.get_job(job_id) or {}).get("progress", {}), "fraction": 1.0,
                                       "eta_s": 0})
    lifecycle.succeed(job_id, report)
    arts.drop_job_scratch(job_id)
    return Status.SUCCEEDED


def _disk_full(e: BaseException | None) -> bool:
    """A full disk or quota, anywhere in the exception's chain (libraries wrap the OSError)."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _fail(lifecycle: Lifecycle, arts: ArtifactStore, job_id: str, code: str, message: str) -> None:
    lifecycle.fail(job_id, code, message)
    arts.drop_job_scratch(job_id)
