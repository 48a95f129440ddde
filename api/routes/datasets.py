"""Uploaded datasets (image folders, .npz): preparing one ahead of its first job
(`POST /v1/datasets/{artifact}/prepare`) and following that preparation. The API only records the request
and sends ids; a worker decodes (worker/preparation.py), under the store key's lock."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import SettingsDep, StoreDep, TenantDep
from api.errors import Problem, invalid, problems
from kdcore.datasets import DATASETS
from kdcore.datasets.store import store_key
from worker.broker import Sender
from worker.preparation import Preparations, PrepState
from worker.queues import prepare_queue
from worker.store import JobStore

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])

Side = Annotated[int, Field(ge=8, le=1024)]


class PrepareRequest(BaseModel):
    """How to prepare: the same fields, with the same defaults, as a job's `dataset.image_size` and
    `dataset.channels` (a job asking the same way then reuses this store). Image folders only: an .npz is
    prepared as given."""

    model_config = ConfigDict(extra="forbid")
    image_size: tuple[Side, Side] | None = Field(None, description="[H, W]; default: the most common train size")
    channels: Literal[1, 3] | None = Field(None, description="1 or 3; default: 1 when every image is grayscale")


class PrepareProgress(BaseModel):
    done: int
    total: int | None = None
    fraction: float


class PreparationPublic(BaseModel):
    """One prepared store of an upload: its state, and once ready what it holds."""

    key: str = Field(description="the store key: sha256 over the upload's content, image_size, channels, policy")
    state: PrepState = Field(description="pending (asked, no worker on it yet) | preparing | ready | error | "
                             "interrupted (its worker stopped mid-way: ask again, or a job on it prepares it)")
    format: str | None = None
    image_size: list[int] | None = Field(None, description="as asked ([H, W]); null: the default")
    channels: int | None = Field(None, description="as asked; null: the default")
    progress: PrepareProgress | None = Field(None, description="images decoded so far")
    counts: dict[str, int] | None = Field(None, description="when ready: images per split")
    shape: list[int] | None = Field(None, description="when ready: [C, H, W] of each prepared image")
    bytes: int | None = Field(None, description="when ready: the store's size on disk")
    error: str | None = Field(None, description="when error: why, naming the bad member of the upload")
    requested_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    worker: str | None = Field(None, description="host:pid of the worker that prepared it last")
    links: dict[str, str] = Field(default_factory=dict)


class PreparationList(BaseModel):
    artifact: str
    data: list[PreparationPublic] = Field(description="every store asked for or prepared from this upload")


def _public(art_id: str, rec: dict[str, Any]) -> PreparationPublic:
    fields = {k: rec.get(k) for k in PreparationPublic.model_fields if k != "links"}
    return PreparationPublic(**fields, links={"self": f"/v1/datasets/{art_id}/prepare/{rec['key']}"})


def _preparable(store: JobStore, art_id: str, tenant: str) -> dict[str, Any]:
    """The tenant's upload `art_id`, when it is a dataset a worker can prepare (404 / 422 otherwise)."""
    art = store.get_artifact(art_id, tenant)
    if art is None:
        raise Problem(404, f"no artifact {art_id}")
    fmt = art.get("format")
    if fmt not in DATASETS or not DATASETS.get(fmt).meta.get("preparable"):
        raise invalid(("path", "artifact"), f"artifact {art_id} is a {fmt} upload; only uploaded datasets (an "
                      ".npz, or a .zip of train/<class>/ and test/<class>/ image folders) are prepared")
    return art


@router.post("/{artifact}/prepare", status_code=202, response_model=PreparationPublic,
             summary="Prepare an uploaded dataset now, ahead of the jobs that will use it",
             description="A worker decodes the upload once into the prepared-dataset store, at `image_size` and "
                         "`channels` (the body may be empty: the defaults), exactly as the first job on it would; "
                         "later jobs asking the same way reuse it. 202: a worker was asked, or one is preparing it "
                         "now (follow `links.self`); 200: it is ready already. Asking again is harmless: one "
                         "worker prepares a store at a time, and the others reuse it.",
             responses={200: {"model": PreparationPublic, "description": "the store is ready already"},
                        **problems(401, 404, 422, _422="the body is invalid, or the upload is not a dataset")})
def prepare(artifact: str, tenant: TenantDep, store: StoreDep, settings: SettingsDep, request: Request,
            response: Response,
            body: Annotated[PrepareRequest | None, Body()] = None) -> PreparationPublic:
    art = _preparable(store, artifact, tenant)
    body = body or PrepareRequest()
    if not DATASETS.get(art["format"]).meta.get("resizable"):
        for field in ("image_size", "channels"):
            if getattr(body, field) is not None:
                raise invalid(("body", field), f"an {art['format']} upload is prepared as given; `{field}` applies "
                              "to image folders")
    size = tuple(body.image_size) if body.image_size else None
    key = store_key(art["sha256"], size, body.channels)  # type: ignore[arg-type]
    preps = Preparations(store, settings.lease_ttl_s)
    rec, send = preps.request(artifact, key, art["format"], size, body.channels)  # type: ignore[arg-type]
    if send:
        queue = prepare_queue(w.get("queues", []) for w in store.live_workers().values())
        Sender(request.app.state.celery).prepare(artifact, key, queue)
    out = _public(artifact, rec)
    response.headers["Location"] = out.links["self"]
    if out.state == PrepState.READY:
        response.status_code = 200
    return out


@router.get("/{artifact}/prepare", response_model=PreparationList, summary="The prepared stores of an upload",
            responses=problems(401, 404, 422, _422="the upload is not a dataset"))
def list_preparations(artifact: str, tenant: TenantDep, store: StoreDep, settings: SettingsDep) -> PreparationList:
    _preparable(store, artifact, tenant)
    recs = Preparations(store, settings.lease_ttl_s).for_artifact(artifact)
    return PreparationList(artifact=artifact, data=[_public(artifact, r) for r in recs])


@router.get("/{artifact}/prepare/{key}", response_model=PreparationPublic,
            summary="One prepared store of an upload: state, progress, sizes",
            responses=problems(401, 404, 422, _422="the upload is not a dataset"))
def get_preparation(artifact: str, key: str, tenant: TenantDep, store: StoreDep,
                    settings: SettingsDep) -> PreparationPublic:
    _preparable(store, artifact, tenant)
    rec = Preparations(store, settings.lease_ttl_s).get(key, artifact=artifact)
    if rec is None:
        raise Problem(404, f"no preparation {key} of artifact {artifact}")
    return _public(artifact, rec)

