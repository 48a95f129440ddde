"""Submitting jobs: the submit-time checks that need the store (referenced uploads and jobs exist,
belong to the caller, and fit the dataset: class count, channels, method needs; every failure names its
field), the tenant's job slots, and the write itself through the lifecycle. `POST /v1/jobs` and
`POST /v1/chains` both submit through here."""
from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager
from pathlib import Path

from api.errors import Problem, invalid_fields
from api.quotas import JobSlots, Quotas
from kdcore.checkpoints import DATASET_FORMATS, inspect_upload
from kdcore.datasets import DatasetInfo, dataset_info
from kdcore.errors import CheckpointError, DatasetError
from kdcore.methods import METHODS
from kdcore.spec import JobSpec, semantic_errors, teacher_input_errors
from worker.artifacts import ArtifactStore
from worker.lifecycle import Lifecycle, SendFailed, Status
from worker.queues import queue_for
from worker.store import JobStore

Loc = tuple[str | int, ...]


def _dataset(spec: JobSpec, tenant: str, store: JobStore, errors: list[dict]) -> DatasetInfo | None:
    """The dataset's facts as the job will see them: an upload's as recorded at inspection, with the
    spec's `image_size` and `channels` (applied when the worker prepares it)."""
    info = _recorded_dataset(spec, tenant, store, errors)
    if info is None or (spec.dataset.image_size is None and spec.dataset.channels is None):
        return info
    size = tuple(spec.dataset.image_size) if spec.dataset.image_size else info.image_size
    return dataclasses.replace(info, image_size=size, in_channels=spec.dataset.channels or info.in_channels)


def _recorded_dataset(spec: JobSpec, tenant: str, store: JobStore, errors: list[dict]) -> DatasetInfo | None:
    if not spec.dataset.artifact:
        return dataset_info(spec.dataset.name)
    loc = ["body", "dataset", "artifact"]
    art = store.get_artifact(spec.dataset.artifact, tenant)
    if art is None:
        errors.append({"loc": loc, "msg": f"no artifact {spec.dataset.artifact}"})
        return None
    if art["format"] != spec.dataset.name:  # the dataset kinds that take uploads are named by their format
        errors.append({"loc": loc, "msg": f"artifact {art['id']} is a {art['format']} file, not a "
                       f"{spec.dataset.name} dataset"})
        return None
    described = (art.get("meta") or {}).get("dataset")
    if described:  # inspected at upload: its facts are recorded, the file is not read again per submit
        return DatasetInfo.from_description(described)
    try:
        return dataset_info(spec.dataset.name, Path(art["path"]))
    except DatasetError as e:
        errors.append({"loc": loc, "msg": str(e)})
        return None


def pending_teacher_jobs(spec: JobSpec, tenant: str, store: JobStore) -> list[str]:
    """Teacher jobs of this spec that have not succeeded yet: the job waits for them."""
    out = []
    for t in spec.teachers:
        rec = store.get_job(t.job, tenant) if t.job else None
        if rec is not None and rec["status"] != Status.SUCCEEDED:
            out.append(rec["id"])
    return out


def _teacher_takes(meta: dict) -> list[int | None] | None:
    """The per-sample input [C, H, W] an upload recorded (None where not fixed), or None when unknown:
    the program's input constraints, or the input shape of older records and of state dicts."""
    recorded = (meta.get("input") or {}).get("shape")
    if recorded and len(recorded) == 3:
        return list(recorded)
    shape = meta.get("input_shape")
    return list(shape[1:]) if shape and len(shape) == 4 else None


def check_submission(spec: JobSpec, tenant: str, store: JobStore, artifacts: ArtifactStore) -> None:
    """Raises a 422 Problem listing every problem found; returns quietly when the job can run now or
    once its (queued or running) teacher jobs have succeeded."""
    errors: list[dict] = []
    info = _dataset(spec, tenant, store, errors)
    if info is not None:
        errors += [{"loc": ["body", *loc], "msg": msg} for loc, msg in
                   semantic_errors(spec, info.num_classes, info.in_channels)]
    logits_only = METHODS.get(spec.distillation.method).meta["logits_only"]
    for i, t in enumerate(spec.teachers):
        base: Loc = ("body", "teacher", i) if isinstance(spec.teacher, list) else ("body", "teacher")
        outputs: int | None = None
        if t.job is not None:
            rec = store.get_job(t.job, tenant)
            if rec is None:
                errors.append({"loc": [*base, "job"], "msg": f"no job {t.job}"})
                continue
            if rec["status"] in (Status.FAILED, Status.CANCELLED, Status.CANCELLING):
                errors.append({"loc": [*base, "job"], "msg": f"teacher job {t.job} is {rec['status']}; "
                               "it must succeed (or still be queued or running) to teach"})
                continue
            if rec["status"] != Status.SUCCEEDED:  # the job waits for it; check what can be checked now
                t_data = (rec.get("spec") or {}).get("dataset") or {}
                if info is not None and t_data.get("name") != info.name:
                    errors.append({"loc": [*base, "job"], "msg": f"teacher job {t.job} trains on "
                                   f"{t_data.get('name')}, not {info.name}; it can teach only once it has "
                                   "succeeded and its classes can be checked"})
                continue
            path = artifacts.job_output(t.job, "student.safetensors")
            if path is None:
                errors.append({"loc": [*base, "job"], "msg": f"job {t.job} left no student.safetensors"})
                continue
            try:
                outputs = inspect_upload(path, path.name).get("num_outputs")
            except CheckpointError as e:
                errors.append({"loc": [*base, "job"], "msg": str(e)})
                continue
        else:
            art = store.get_artifact(t.checkpoint or "", tenant)
            if art is None:
                errors.append({"loc": [*base, "checkpoint"], "msg": f"no artifact {t.checkpoint}"})
                continue
            fmt, meta = art["format"], art.get("meta") or {}
            if fmt in DATASET_FORMATS:
                errors.append({"loc": [*base, "checkpoint"], "msg": f"artifact {art['id']} is a dataset, "
                               "not a checkpoint"})
                continue
            has_arch = t.architecture or (meta.get("metadata") or {}).get("architecture")
            if fmt in ("safetensors", "state_dict") and not has_arch:
                errors.append({"loc": [*base, "architecture"], "msg": "a state-dict checkpoint needs "
                               "`architecture` (a registry name) to be built"})
            if fmt in ("export", "onnx") and (t.architecture or t.kwargs):
                errors.append({"loc": [*base, "architecture"], "msg": f"a {fmt} checkpoint carries its own "
                               "graph; drop `architecture`/`kwargs`"})
            if fmt == "onnx" and not logits_only:
                errors.append({"loc": [*base, "checkpoint"], "msg": f"method {spec.distillation.method!r} needs "
                               "intermediate features, which an ONNX teacher cannot give; use a .pt2 or state dict"})
            outputs = meta.get("num_outputs")
            if info is not None:  # what the teacher takes against what the dataset gives through teacher.input
                errors += [{"loc": [*base, *loc], "msg": msg} for loc, msg in
                           teacher_input_errors(t, _teacher_takes(meta), info.name, info.input_shape)]
        if info is not None and outputs is not None and outputs != info.num_classes:
            field = "job" if t.job is not None else "checkpoint"
            errors.append({"loc": [*base, field], "msg": f"teacher outputs {outputs} classes but dataset "
                           f"{info.name} has {info.num_classes}"})
    if errors:
        raise invalid_fields(errors)


def job_slots(quotas: Quotas, lifecycle: Lifecycle, tenant: str, count: int,
              idempotency_key: str | None) -> AbstractContextManager[JobSlots]:
    """The tenant's open-job limit (429 past it). A replay of an Idempotency-Key already used needs no
    slot: it answers the earlier job, even when the tenant is at its limit."""
    return quotas.job_slots(tenant, 0 if lifecycle.is_replay(tenant, idempotency_key) else count)


def submit_job(spec: JobSpec, tenant: str, lifecycle: Lifecycle, idempotency_key: str | None = None) -> dict:
    """Writes the job and sends it to its queue; a job whose teacher jobs have not succeeded yet is held
    back instead (the lifecycle sends it when they have). 503 when the broker is away."""
    store = lifecycle.store
    queue = queue_for(spec.resources.device, (w.get("queues", []) for w in store.live_workers().values()))
    wait_for = pending_teacher_jobs(spec, tenant, store)
    try:
        rec, _ = lifecycle.submit(tenant, spec.model_dump(mode="json"), queue, spec.name, idempotency_key,
                                  wait_for=wait_for)
    except SendFailed as e:
        raise Problem(503, f"the queue is unavailable ({e}); the job was not accepted") from e
    return rec
