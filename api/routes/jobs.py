"""Jobs: submit, list, follow (JSON and server-sent events), cancel, report, downloads."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from api.deps import ArtifactsDep, LifecycleDep, QuotasDep, ReadsDep, StoreDep, TenantDep
from api.errors import Problem, problems
from api.reads import AsyncReads
from api.schemas import EventList, JobList, JobPublic
from api.sse import job_events
from api.submission import check_submission, job_slots, submit_job
from kdcore.spec import JobSpec
from worker.artifacts import JOB_OUTPUTS, output_media_type
from worker.lifecycle import AlreadyEnded, Status
from worker.store import JobStore

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_DIGITS = {"dataset": {"name": "digits"}, "resources": {"device": "cpu"}}
_KD = {"method": "kd", "temperature": 4.0, "alpha": 0.9}
_RECIPE = {"epochs": 8, "batch_size": 64, "lr": 0.05, "seed": 0}

# Named examples of POST /v1/jobs, listed in Swagger UI's example menu and in ReDoc. The first runs as it
# stands ("Try it out", then Execute: 202); the others name an earlier job or an upload: put in your id.
SUBMIT_EXAMPLES = {
    "teacher": {
        "summary": "Train a teacher on digits (method none: labels only); runs as it stands",
        "description": "The service makes its own teacher: an MLP trained on scikit-learn's bundled 8x8 digits, "
                       "which needs no dataset files. Its id is the `teacher.job` of the next examples.",
        "value": {"name": "digits-teacher", "student": {"architecture": "mlp", "kwargs": {"hidden": [256, 256]}},
                  **_DIGITS, "distillation": {"method": "none"}, "training": _RECIPE},
    },
    "kd_from_job": {
        "summary": "Distill an earlier job's model into a small student, with a baseline",
        "description": "`teacher.job` names a job (here the teacher example's): its student is the teacher. A job "
                       "that is still running is waited for. `baseline: true` also trains the student on labels "
                       "alone and reports the KD gain.",
        "value": {"name": "digits-kd", "teacher": {"job": "job_0123456789abcdef"},
                  "student": {"architecture": "mlp", "kwargs": {"hidden": [32]}}, **_DIGITS,
                  "distillation": _KD, "training": _RECIPE, "baseline": True},
    },
    "kd_from_upload": {
        "summary": "Distill an uploaded teacher (a state dict from POST /v1/artifacts)",
        "description": "`teacher.checkpoint` is the `art_…` id that `POST /v1/artifacts` returned. A state dict "
                       "(.safetensors, .pt, .pth) needs its `architecture` and `kwargs`; a .pt2 or .onnx upload "
                       "needs neither.",
        "value": {"name": "digits-kd-upload",
                  "teacher": {"checkpoint": "art_0123456789abcdef", "architecture": "mlp",
                              "kwargs": {"hidden": [256, 256]}},
                  "student": {"architecture": "mlp", "kwargs": {"hidden": [32]}}, **_DIGITS,
                  "distillation": _KD, "training": _RECIPE},
    },
    "kd_from_foreign_program": {
        "summary": "Distill a teacher exported elsewhere (.pt2 or .onnx) that takes other input",
        "description": "A teacher trained elsewhere at 32x32 with its own normalization and a log-softmax head, "
                       "on 28x28 MNIST: `teacher.input` resizes and renormalizes the dataset's images for it "
                       "(teacher path only) and `teacher.outputs` says its outputs are log-probabilities. The "
                       "upload's `meta.input` says what it takes; without the adapter the submit is a 422 naming "
                       "`teacher.input.size`. See docs/spec.md, Teachers exported elsewhere.",
        "value": {"name": "mnist-kd-foreign",
                  "teacher": {"checkpoint": "art_0123456789abcdef",
                              "input": {"size": [32, 32], "mean": [0.5], "std": [0.5]}, "outputs": "log_probs"},
                  "student": {"architecture": "mlp", "kwargs": {"hidden": [128]}}, "dataset": {"name": "mnist"},
                  "distillation": {"method": "kd", "temperature": 4.0, "alpha": 1.0}, "training": _RECIPE},
    },
    "chain_link": {
        "summary": "A two-link chain by hand: teacher job -> assistant job -> student job",
        "description": "Submit the assistant with the teacher's job as its teacher, then this job with the "
                       "assistant's id: it waits until the assistant has succeeded (`POST /v1/chains` does both "
                       "in one call). Here the student learns from the assistant with a temperature that falls "
                       "from 8 to 2 over the epochs.",
        "value": {"name": "digits-chain-student", "teacher": {"job": "job_0123456789abcdef"},
                  "student": {"architecture": "mlp", "kwargs": {"hidden": [16]}}, **_DIGITS,
                  "distillation": {**_KD, "schedule": {"temperature": {"kind": "linear", "start": 8, "end": 2}}},
                  "training": _RECIPE},
    },
}


def _found(rec: dict | None, job_id: str) -> dict:
    if rec is None:  # missing, or another tenant's: the same answer
        raise Problem(404, f"no job {job_id}")
    return rec


def _job(store: JobStore, job_id: str, tenant: str) -> dict:
    return _found(store.get_job(job_id, tenant), job_id)


async def _ajob(reads: AsyncReads, job_id: str, tenant: str) -> dict:
    return _found(await reads.get_job(job_id, tenant), job_id)


@router.post("", status_code=202, response_model=JobPublic,
             summary="Submit a distillation job",
             description="Validates the JobSpec (names against the registries, uploads and earlier jobs against "
                         "the store, class counts against the dataset), writes a queued job and enqueues its id. "
                         "With the same `Idempotency-Key` a second submit returns the first job.",
             responses=problems(413, 422, 429, 503, _422="invalid spec; `errors` names each field",
                                _503="the queue is unavailable: the job was not accepted"))
def submit(spec: Annotated[JobSpec, Body(openapi_examples=SUBMIT_EXAMPLES)], response: Response, tenant: TenantDep,
           lifecycle: LifecycleDep, artifacts: ArtifactsDep, quotas: QuotasDep,
           idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> JobPublic:
    check_submission(spec, tenant, lifecycle.store, artifacts)
    with job_slots(quotas, lifecycle, tenant, 1, idempotency_key) as slots:
        rec = submit_job(spec, tenant, lifecycle, idempotency_key)
        slots.bind(rec["id"])
    response.headers["Location"] = f"/v1/jobs/{rec['id']}"
    return JobPublic.from_record(rec)


@router.get("", response_model=JobList, summary="List jobs, newest first")
def list_jobs(tenant: TenantDep, store: StoreDep, status: Status | None = None,
              limit: Annotated[int, Query(ge=1, le=200)] = 20,
              cursor: Annotated[str | None, Query(pattern=r"^[0-9.eE+-]+$", max_length=40)] = None) -> JobList:
    try:
        after = float(cursor) if cursor else None
    except ValueError:
        raise Problem(422, "cursor: not a cursor from an earlier page",
                      [{"loc": ["query", "cursor"], "msg": "not a cursor from an earlier page"}]) from None
    recs, nxt = store.list_jobs(tenant, status, limit, after)
    return JobList(data=[JobPublic.from_record(r) for r in recs], next_cursor=nxt)


@router.get("/{job_id}", response_model=JobPublic, summary="A job's status, progress, latest metrics, error")
async def get_job(job_id: str, tenant: TenantDep, reads: ReadsDep) -> JobPublic:
    return JobPublic.from_record(await _ajob(reads, job_id, tenant))


@router.get("/{job_id}/events", response_model=EventList,
            summary="A job's events: JSON, or a server-sent event stream with `Accept: text/event-stream`",
            responses={200: {"content": {"text/event-stream": {}}}})
async def events(job_id: str, request: Request, tenant: TenantDep, reads: ReadsDep,
           after: Annotated[str | None, Query(pattern=r"^\d+-\d+$", description="event id to read after")] = None,
           limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
           last_event_id: Annotated[str | None, Header(pattern=r"^\d+-\d+$")] = None):
    await _ajob(reads, job_id, tenant)
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(job_events(request.app.state.aredis, job_id, last_event_id or after or "0-0"),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    rows = await reads.events(job_id, after, limit)
    return EventList(data=rows, next_cursor=rows[-1]["id"] if rows else after)


@router.post("/{job_id}/cancel", status_code=202, response_model=JobPublic,
             summary="Ask a queued or running job to stop", responses=problems(409, _409="already ended"))
def cancel(job_id: str, tenant: TenantDep, lifecycle: LifecycleDep) -> JobPublic:
    _job(lifecycle.store, job_id, tenant)
    try:
        lifecycle.cancel(job_id)
    except AlreadyEnded as e:
        raise Problem(409, str(e)) from None
    return JobPublic.from_record(_job(lifecycle.store, job_id, tenant))


@router.get("/{job_id}/report", summary="The final report", responses=problems(409, _409="not finished"))
async def report(job_id: str, tenant: TenantDep, reads: ReadsDep) -> dict:
    rec = await _ajob(reads, job_id, tenant)
    if rec["status"] != Status.SUCCEEDED or rec.get("report") is None:
        why = f": {rec['error']['message']}" if rec.get("error") else ""
        raise Problem(409, f"job {job_id} is {rec['status']}{why}; the report comes when it has succeeded")
    return rec["report"]


@router.get("/{job_id}/artifacts/{name}", summary="Download a job's output",
            description=f"Names: {', '.join(JOB_OUTPUTS)}, and a method's further models such as "
                        "`peer.safetensors` (dml).",
            responses={200: {"content": {"application/octet-stream": {}}},
                       **problems(404, _404="no such job, output name, or output yet")})
def download(job_id: str, name: str, tenant: TenantDep, store: StoreDep, artifacts: ArtifactsDep) -> FileResponse:
    rec = _job(store, job_id, tenant)
    media_type = output_media_type(name)
    if media_type is None:
        raise Problem(404, f"no output {name!r}; a job offers {', '.join(JOB_OUTPUTS)} (and a method's further "
                      "models, such as peer.safetensors)")
    path = artifacts.job_output(job_id, name)
    if path is None or rec["status"] != Status.SUCCEEDED:
        raise Problem(404, f"job {job_id} ({rec['status']}) has no {name} yet")
    return FileResponse(path, media_type=media_type, filename=f"{job_id}-{name}")
