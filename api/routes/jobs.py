"""Jobs: submit, list, follow (JSON and server-sent events), cancel, report, downloads."""
from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from api.deps import ArtifactsDep, QuotasDep, ReadsDep, StoreDep, TenantDep
from api.errors import Problem, problems
from api.quotas import Quotas
from api.reads import AsyncReads
from api.schemas import EventList, JobList, JobPublic, JobStatus
from api.sse import job_events
from api.submission import check_submission, pending_teacher_jobs
from kdcore.spec import JobSpec
from worker.artifacts import JOB_OUTPUTS
from worker.celery_app import RUN_JOB
from worker.dependencies import enqueue_ready
from worker.store import TERMINAL, JobStore, P, now_iso

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _found(rec: dict | None, job_id: str) -> dict:
    if rec is None:  # missing, or another tenant's: the same answer
        raise Problem(404, f"no job {job_id}")
    return rec


def _job(store: JobStore, job_id: str, tenant: str) -> dict:
    return _found(store.get_job(job_id, tenant), job_id)


async def _ajob(reads: AsyncReads, job_id: str, tenant: str) -> dict:
    return _found(await reads.get_job(job_id, tenant), job_id)


def _queue(spec: JobSpec, store: JobStore) -> str:
    if spec.resources.device != "auto":
        return "gpu" if spec.resources.device == "cuda" else "cpu"
    # auto: a GPU when some live worker serves the gpu queue, else the CPU queue
    return "gpu" if any("gpu" in w.get("queues", []) for w in store.live_workers().values()) else "cpu"


@router.post("", status_code=202, response_model=JobPublic,
             summary="Submit a distillation job",
             description="Validates the JobSpec (names against the registries, uploads and earlier jobs against "
                         "the store, class counts against the dataset), writes a queued job and enqueues its id. "
                         "With the same `Idempotency-Key` a second submit returns the first job.",
             responses=problems(413, 422, 429, 503, _422="invalid spec; `errors` names each field",
                                _503="the queue is unavailable: the job was not accepted"))
def submit(spec: JobSpec, request: Request, response: Response, tenant: TenantDep, store: StoreDep,
           artifacts: ArtifactsDep, quotas: QuotasDep,
           idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> JobPublic:
    check_submission(spec, tenant, store, artifacts)
    with job_slots(quotas, store, tenant, 1, idempotency_key) as slots:
        rec = create_and_enqueue(spec, tenant, store, request.app.state.celery, idempotency_key)
        slots.bind(rec["id"])
    response.headers["Location"] = f"/v1/jobs/{rec['id']}"
    return JobPublic.from_record(rec)


def job_slots(quotas: Quotas, store: JobStore, tenant: str, count: int, idempotency_key: str | None):
    """The tenant's open-job limit (429 past it). A replay of an Idempotency-Key already used needs no
    slot: it answers the earlier job, even when the tenant is at its limit."""
    replay = bool(idempotency_key) and store.r.exists(f"{P}idem:{tenant}:{idempotency_key}")
    return quotas.job_slots(tenant, 0 if replay else count)


def create_and_enqueue(spec: JobSpec, tenant: str, store: JobStore, celery: Celery,
                       idempotency_key: str | None = None) -> dict:
    """Writes the job record, then enqueues its id; a job whose teacher jobs have not succeeded yet is
    held back instead (worker.dependencies enqueues it when they have)."""
    queue = _queue(spec, store)
    wait_for = pending_teacher_jobs(spec, tenant, store)
    rec, created = store.create_job(tenant, spec.model_dump(mode="json"), queue, spec.name, idempotency_key,
                                    wait_for=wait_for)
    if created:
        try:
            if wait_for:  # the teachers may have ended between the check and the write
                enqueue_ready(store, lambda job_id, q: celery.send_task(RUN_JOB, args=[job_id], queue=q))
            else:
                celery.send_task(RUN_JOB, args=[rec["id"]], queue=queue)
                store.mark_sent(rec["id"])  # until here a worker's sweep would send it, should this process die
        except Exception as e:  # the broker is away: say so rather than leave a job queued forever
            store.transition(rec["id"], "failed", ["queued"], finished_at=now_iso(),
                             error={"code": "enqueue_failed", "message": f"could not enqueue: {e}"})
            raise Problem(503, f"the queue is unavailable ({e}); the job was not accepted") from e
    return store.get_job(rec["id"]) or rec


@router.get("", response_model=JobList, summary="List jobs, newest first")
def list_jobs(tenant: TenantDep, store: StoreDep, status: JobStatus | None = None,
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
def cancel(job_id: str, tenant: TenantDep, store: StoreDep) -> JobPublic:
    rec = _job(store, job_id, tenant)
    if rec["status"] in TERMINAL:
        raise Problem(409, f"job {job_id} already {rec['status']}")
    store.request_cancel(job_id)
    return JobPublic.from_record(_job(store, job_id, tenant))


@router.get("/{job_id}/report", summary="The final report", responses=problems(409, _409="not finished"))
async def report(job_id: str, tenant: TenantDep, reads: ReadsDep) -> dict:
    rec = await _ajob(reads, job_id, tenant)
    if rec["status"] != "succeeded" or rec.get("report") is None:
        why = f": {rec['error']['message']}" if rec.get("error") else ""
        raise Problem(409, f"job {job_id} is {rec['status']}{why}; the report comes when it has succeeded")
    return rec["report"]


@router.get("/{job_id}/artifacts/{name}", summary="Download a job's output",
            description=f"Names: {', '.join(JOB_OUTPUTS)}.",
            responses={200: {"content": {"application/octet-stream": {}}},
                       **problems(404, _404="no such job, output name, or output yet")})
def download(job_id: str, name: str, tenant: TenantDep, store: StoreDep, artifacts: ArtifactsDep) -> FileResponse:
    rec = _job(store, job_id, tenant)
    if name not in JOB_OUTPUTS:
        raise Problem(404, f"no output {name!r}; a job offers {', '.join(JOB_OUTPUTS)}")
    path = artifacts.job_output(job_id, name)
    if path is None or rec["status"] != "succeeded":
        raise Problem(404, f"job {job_id} ({rec['status']}) has no {name} yet")
    return FileResponse(path, media_type=JOB_OUTPUTS[name], filename=f"{job_id}-{name}")
