"""Uploads: teacher checkpoints and dataset files, stored under ids we generate."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from api.body_limit import UPLOAD_PATH
from api.deps import ArtifactsDep, QuotasDep, SettingsDep, StoreDep, TenantDep
from api.errors import Problem, invalid, problems
from api.schemas import ArtifactPublic
from api.upload_stream import receive_file
from kdcore.checkpoints import DATASET_FORMATS, EXTENSIONS, detect_format, inspect_upload
from kdcore.datasets import dataset_info
from kdcore.errors import CheckpointError, DatasetError
from worker.store import new_id, now_iso

router = APIRouter(prefix=UPLOAD_PATH, tags=["artifacts"])


UPLOAD_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary", "description": "the file; its name's extension "
                            "says its format (the rest of the name is not used)"}}}}}}


def _check_head(filename: str, head: bytes) -> None:
    """Refuses a wrong extension as soon as the part's headers arrive, and a wrong magic number as
    soon as the first bytes do, before the rest of the file is read."""
    try:
        if head:
            detect_format(filename, head)
        elif Path(filename).suffix.lower() not in EXTENSIONS:
            detect_format(filename, b"?")  # raises the message that lists the accepted types
    except CheckpointError as e:
        raise invalid(("body", "file"), str(e)) from e


def _inspect(path: Path, filename: str) -> dict:
    """Reads the file's header (never builds or runs a model); datasets are checked as data, without being
    decoded: .npz from its array headers, image-folder zips from their directory and image headers (plus a
    few sample decodes), so the API's memory does not grow with the dataset."""
    try:
        meta = inspect_upload(path, filename)  # first: zip traversal and bomb rules, from the directory only
        if meta["format"] in DATASET_FORMATS:  # then its dataset's inspector (shapes, labels, classes, image
            # headers): the dataset kinds that take uploads are named by their format (npz, imagefolder)
            meta["dataset"] = dataset_info(meta["format"], path).describe()
    except (CheckpointError, DatasetError) as e:
        raise invalid(("body", "file"), str(e)) from e
    return meta


@router.post("", status_code=201, response_model=ArtifactPublic, openapi_extra={"requestBody": UPLOAD_BODY},
             summary="Upload a teacher checkpoint (.safetensors, .pt/.pth state dict, .pt2, .onnx) or a dataset "
                     "(.npz, or a .zip of train/<class>/ and test/<class>/ image folders)",
             description="The body streams to disk under an id the service generates (the client's file name is "
                         "kept only as a label) and is hashed (sha256) on the way. It stops with 413 as soon as it "
                         "passes `KD_MAX_UPLOAD_BYTES` or the tenant's `KD_MAX_TENANT_UPLOAD_BYTES`. Nothing in an "
                         "upload is executed: pickles are read with torch's weights-only loader, .pt2 programs "
                         "are vetted before loading, archives are checked for traversal and bombs.",
             responses=problems(400, 401, 413, 415, 422))
async def upload(request: Request, tenant: TenantDep, store: StoreDep, artifacts: ArtifactsDep,
                 settings: SettingsDep, quotas: QuotasDep) -> ArtifactPublic:
    art_id = new_id("art")

    def open_dest(filename: str) -> Path:
        return artifacts.upload_path(art_id, Path(filename).suffix.lower())

    def charge(n: int) -> None:
        quotas.reserve_bytes(tenant, art_id, n)

    received = None
    try:
        received = await receive_file(request, "file", settings.max_upload_bytes, open_dest, charge, _check_head)
        meta = await run_in_threadpool(_inspect, received.path, received.filename)
        record = {"id": art_id, "tenant": tenant, "filename": received.filename, "sha256": received.sha256,
                  "size": received.size, "format": meta["format"], "created_at": now_iso(),
                  "path": str(received.path), "meta": meta}

        def commit() -> None:
            artifacts.publish_upload(received.path)  # a shared storage has it before any worker can see its id
            quotas.commit_bytes(tenant, art_id, received.size)
            store.put_artifact(record)

        await run_in_threadpool(commit)
    except BaseException:
        if received is not None:
            received.path.unlink(missing_ok=True)
        await run_in_threadpool(quotas.release_bytes, tenant, art_id)
        raise
    return ArtifactPublic(**record)


@router.get("/{art_id}", response_model=ArtifactPublic, summary="An upload's metadata", responses=problems(401, 404))
def get_artifact(art_id: str, tenant: TenantDep, store: StoreDep) -> ArtifactPublic:
    meta = store.get_artifact(art_id, tenant)
    if meta is None:
        raise Problem(404, f"no artifact {art_id}")
    return ArtifactPublic(**meta)
