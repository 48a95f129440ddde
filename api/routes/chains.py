"""Teacher-assistant chains: teacher -> assistant(s) -> student as linked jobs (Mirzadeh et al. 2020).

A chain is sugar over ordinary jobs: link 1 distills the given teacher into the first assistant, and
every later link takes the previous link's student as its teacher (`teacher: {job: <id>}`). Each link
is a normal job the user can follow, cancel and download from; later links wait (queued, with
`waiting_for`) until the link before has succeeded, and fail with `teacher_failed` if it does not.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.deps import ArtifactsDep, LifecycleDep, QuotasDep, TenantDep
from api.errors import invalid_fields, problems
from api.schemas import JobPublic
from api.submission import check_submission, job_slots, submit_job
from kdcore.datasets import dataset_info
from kdcore.errors import DatasetError
from kdcore.spec import (
    DatasetSpec,
    DistillationSpec,
    JobSpec,
    ResourcesSpec,
    StudentSpec,
    TeacherSpec,
    TrainingSpec,
    semantic_errors,
)

router = APIRouter(prefix="/v1/chains", tags=["chains"])


class ChainCreate(BaseModel):
    """teacher -> assistants[0] -> … -> student, every link with the same data, method and recipe."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "ta-chain",
        "teacher": {"job": "job_0123456789abcdef"},
        "assistants": [{"architecture": "mlp", "kwargs": {"hidden": [256]}}],
        "student": {"architecture": "mlp", "kwargs": {"hidden": [32]}},
        "dataset": {"name": "digits"},
        "distillation": {"method": "kd", "temperature": 4, "alpha": 0.9},
        "training": {"epochs": 5, "batch_size": 64, "lr": 0.05},
    }]})

    name: str | None = Field(None, max_length=180)
    teacher: TeacherSpec
    assistants: list[StudentSpec] = Field(min_length=1, max_length=4, description="the intermediate models, "
                                          "largest first; each becomes the next link's teacher")
    student: StudentSpec
    dataset: DatasetSpec
    distillation: DistillationSpec = Field(default_factory=DistillationSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    baseline: bool = Field(False, description="the last link also trains the student without a teacher")


class ChainPublic(BaseModel):
    jobs: list[JobPublic] = Field(description="the links in order; the last one's student is the chain's result")


_PENDING = "job_pending"  # stands for the previous link's id until that job exists


def _links(chain: ChainCreate) -> list[JobSpec]:
    models = [*chain.assistants, chain.student]
    specs = []
    for i, model in enumerate(models):
        last = i == len(models) - 1
        where = ("body", "student") if last else ("body", "assistants", i)
        try:
            specs.append(JobSpec.model_validate({
                "name": f"{chain.name or 'chain'} {i + 1}/{len(models)}",
                "teacher": chain.teacher.model_dump() if i == 0 else {"job": _PENDING},
                "student": model.model_dump(), "dataset": chain.dataset.model_dump(),
                "distillation": chain.distillation.model_dump(), "training": chain.training.model_dump(),
                "resources": chain.resources.model_dump(), "baseline": chain.baseline and last}))
        except ValidationError as e:
            errors = [{"loc": ["body", *(str(x) for x in err["loc"])] if err["loc"] else [*where],
                       "msg": err["msg"]} for err in e.errors()]
            raise invalid_fields(errors) from None
    return specs


@router.post("", status_code=202, response_model=ChainPublic, summary="Submit a teacher-assistant chain",
             description="Creates one job per link: teacher -> assistants -> student. Later links wait for the "
                         "link before; follow each as a job. `Location` names the last link.",
             responses=problems(413, 422, 429, 503, _422="invalid chain; `errors` names each field"))
def submit_chain(chain: ChainCreate, response: Response, tenant: TenantDep, lifecycle: LifecycleDep,
                 artifacts: ArtifactsDep, quotas: QuotasDep,
                 idempotency_key: Annotated[str | None, Header(max_length=180)] = None) -> ChainPublic:
    specs = _links(chain)
    check_submission(specs[0], tenant, lifecycle.store, artifacts)  # the given teacher against the data
    try:
        info = dataset_info(chain.dataset.name) if not chain.dataset.artifact else None
    except DatasetError:
        info = None
    if info is not None:  # check_submission already read an uploaded dataset; the later links share it
        errors: list[dict[str, Any]] = []
        for i, spec in enumerate(specs[1:], start=1):
            where: tuple[str | int, ...] = ("student",) if i == len(specs) - 1 else ("assistants", i)
            errors += [{"loc": ["body", *where, *loc[1:]], "msg": msg}
                       for loc, msg in semantic_errors(spec, info.num_classes, info.in_channels)
                       if loc[0] == "student"]
        if errors:
            raise invalid_fields(errors)
    jobs: list[dict[str, Any]] = []
    # every link counts against the tenant's open-job limit: all of them are admitted, or none (429)
    with job_slots(quotas, lifecycle, tenant, len(specs), f"{idempotency_key}:0" if idempotency_key else None) as slots:
        for i, spec in enumerate(specs):
            if i > 0:
                spec = spec.model_copy(update={"teacher": TeacherSpec(job=jobs[-1]["id"])})
            key = f"{idempotency_key}:{i}" if idempotency_key else None
            jobs.append(submit_job(spec, tenant, lifecycle, key))
            slots.bind(jobs[-1]["id"])
    response.headers["Location"] = f"/v1/jobs/{jobs[-1]['id']}"
    return ChainPublic(jobs=[JobPublic.from_record(j) for j in jobs])
