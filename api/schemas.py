"""Response schemas. The request schema for a job is kdcore's JobSpec (the one the worker runs)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from worker.lifecycle import Status


class Progress(BaseModel):
    phase: str | None = None
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    fraction: float | None = Field(None, description="share of all training steps done, in [0, 1]")
    eta_s: float | None = Field(None, description="seconds left, estimated from this run's pace")
    loss: float | None = Field(None, description="training loss of the latest step reported")
    lr: float | None = Field(None, description="learning rate at that step")


class ErrorPublic(BaseModel):
    """Why a job failed: a stable `code` and a message saying what to change."""

    code: str
    message: str


class JobPublic(BaseModel):
    id: str
    name: str | None = None
    status: Status
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    queue: str
    attempts: int = 0
    spec: dict[str, Any]
    progress: Progress
    metrics: dict[str, Any] = Field(default_factory=dict, description="latest per-epoch values")
    error: ErrorPublic | None = None
    report: dict[str, Any] | None = Field(None, description="when succeeded: the final report")
    waiting_for: list[str] = Field(default_factory=list, description="while queued: teacher jobs it waits for "
                                   "(it is enqueued when they have succeeded, and fails if one fails)")
    notify: dict[str, Any] | None = Field(None, description="the job's webhook: its url (the secret is never shown)")
    notifications: list[dict[str, Any]] = Field(default_factory=list, description="webhook delivery attempts: "
                                                "event, url, attempt, at, outcome, status_code or error")
    links: dict[str, str] = Field(default_factory=dict)

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> JobPublic:
        jid = rec["id"]
        links = {"self": f"/v1/jobs/{jid}", "events": f"/v1/jobs/{jid}/events", "cancel": f"/v1/jobs/{jid}/cancel"}
        if rec["status"] == Status.SUCCEEDED:
            links.update(report=f"/v1/jobs/{jid}/report",
                         student=f"/v1/jobs/{jid}/artifacts/student.safetensors",
                         curves=f"/v1/jobs/{jid}/artifacts/curves.png")
            for made in ((rec.get("report") or {}).get("export") or {}).values():  # deployable students, if asked
                if isinstance(made, dict) and made.get("file"):
                    links[made["file"].replace(".", "_")] = f"/v1/jobs/{jid}/artifacts/{made['file']}"
        return cls(id=jid, name=rec.get("name") or None, status=rec["status"], created_at=rec["created_at"],
                   started_at=rec.get("started_at"), finished_at=rec.get("finished_at"), queue=rec["queue"],
                   attempts=rec.get("attempts", 0), spec=rec["spec"], progress=Progress(**(rec.get("progress") or {})),
                   metrics=rec.get("metrics") or {}, error=rec.get("error"), report=rec.get("report"),
                   waiting_for=rec.get("waiting_for") or [] if rec["status"] == Status.QUEUED else [],
                   notify=rec.get("notify"), notifications=rec.get("notifications") or [], links=links)


class JobList(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next (older) page")


class Event(BaseModel):
    id: str = Field(description="stream id; pass as `after` to read only later events")
    type: str = Field(description="status | phase | progress | epoch | log")
    ts: str | None
    data: dict[str, Any]


class EventList(BaseModel):
    data: list[Event]
    next_cursor: str | None


class ArtifactPublic(BaseModel):
    id: str
    filename: str
    sha256: str
    size: int
    format: str = Field(description="safetensors | state_dict | export | onnx | npz | imagefolder")
    created_at: str
    meta: dict[str, Any] = Field(default_factory=dict, description="what inspection of the file found")


class Catalog(BaseModel):
    architectures: list[dict[str, Any]]
    datasets: list[dict[str, Any]]
    methods: list[dict[str, Any]]
