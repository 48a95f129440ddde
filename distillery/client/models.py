"""Typed views of the API's answers. Field names and types follow the server's OpenAPI schema
(`JobPublic`, `Progress`, `ErrorPublic`, `JobList`, `Event`, `ArtifactPublic`); tests/distillery/
test_client.py checks them against the live `/openapi.json`, so a renamed field fails a test rather
than a user. Unknown fields are kept (extra="allow"): a newer server adding one breaks no older client.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from worker.lifecycle import TERMINAL, Status  # the one definition of the statuses (no torch, no Celery)


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class Progress(_Model):
    phase: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    fraction: float | None = None
    eta_s: float | None = None
    loss: float | None = None
    lr: float | None = None


class JobError(_Model):
    """Why a job failed (the schema's `ErrorPublic`)."""

    code: str
    message: str


class JobInfo(_Model):
    """A job as `GET /v1/jobs/{id}` returns it (the schema's `JobPublic`)."""

    id: str
    name: str | None = None
    status: Status
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    queue: str
    attempts: int = 0
    spec: dict[str, Any]
    progress: Progress = Field(default_factory=Progress)
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: JobError | None = None
    report: dict[str, Any] | None = None
    waiting_for: list[str] = Field(default_factory=list)
    notify: dict[str, Any] | None = None
    notifications: list[dict[str, Any]] = Field(default_factory=list)
    links: dict[str, str] = Field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL


class JobList(_Model):
    data: list[JobInfo]
    next_cursor: str | None = None


class Event(_Model):
    """One job event: `type` is status | phase | progress | epoch | log (and `end`, which only the
    server-sent stream has: the job has ended, `data.status` says how)."""

    id: str | None = None
    type: str
    ts: str | None = None
    data: dict[str, Any]


class EventList(_Model):
    data: list[Event]
    next_cursor: str | None = None


class Artifact(_Model):
    """An upload's metadata (the schema's `ArtifactPublic`)."""

    id: str
    filename: str
    sha256: str
    size: int
    format: str
    created_at: str
    meta: dict[str, Any] = Field(default_factory=dict)


class ModelStats(_Model):
    architecture: str | None = None
    top1: float | None = None
    top5: float | None = None
    params: int | None = None
    size_bytes: int | None = None


class Report(_Model):
    """The final report of a succeeded job (docs/spec.md, "What a job produces"). The schema types it as
    an object; the fields named here are those the worker writes, the rest stay reachable as extras
    (`report.model_extra`); `export` appears only when the job asked for it."""

    method: str | None = None
    dataset: str | None = None
    student: ModelStats
    teacher: ModelStats | None = None
    agreement: float | None = None
    compression: float | None = None
    baseline: dict[str, Any] | None = None
    kd_gain: float | None = None
    epochs: list[dict[str, Any]] = Field(default_factory=list)
    export: dict[str, Any] | None = None
    device: str | None = None
    wall_seconds: float | None = None

    @property
    def latency(self) -> dict[str, Any] | None:
        """`export.latency` when the job asked for it: {device, precision, statistic, batches: {"1":
        {student_ms, teacher_ms, speedup}, "64": {...}}}."""
        return (self.export or {}).get("latency")

    @property
    def exported_files(self) -> list[str]:
        """The deployable students the export phase kept (student.onnx, student.pt2, student.int8.onnx)."""
        return [made["file"] for made in (self.export or {}).values() if isinstance(made, dict) and made.get("file")]


# The client's models and the schema components they mirror (the test walks this table).
SCHEMA_COMPONENTS: dict[str, type[BaseModel]] = {
    "JobPublic": JobInfo, "Progress": Progress, "ErrorPublic": JobError, "JobList": JobList, "Event": Event,
    "EventList": EventList, "ArtifactPublic": Artifact,
}
