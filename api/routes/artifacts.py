"""Uploads: teacher checkpoints and dataset files, stored under ids we generate."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Request, UploadFile

from api.deps import ArtifactsDep, SettingsDep, StoreDep, TenantDep
from api.errors import Problem, invalid
from api.schemas import ArtifactPublic
from kdcore.checkpoints import CheckpointError, detect_format, inspect_upload
from kdcore.datasets import DatasetError, inspect_imagefolder, inspect_npz
from worker.store import new_id, now_iso

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])
CHUNK = 1 << 20
# Uploads that are datasets (kdcore.checkpoints.DATASET_FORMATS): checked as data (shapes, labels, images) on arrival.
DATASET_INSPECTORS = {"npz": inspect_npz, "imagefolder": inspect_imagefolder}


@router.post("", status_code=201, response_model=ArtifactPublic,
             summary="Upload a teacher checkpoint (.safetensors, .pt/.pth state dict, .pt2, .onnx) or a dataset "
                     "(.npz, or a .zip of train/<class>/ and test/<class>/ image folders)",
             responses={413: {"description": "larger than KD_MAX_UPLOAD_BYTES"},
                        422: {"description": "not a readable checkpoint or dataset"}})
def upload(request: Request, file: Annotated[UploadFile, File(description="the file")], tenant: TenantDep,
           store: StoreDep, artifacts: ArtifactsDep, settings: SettingsDep) -> ArtifactPublic:
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise Problem(413, f"upload of {declared} bytes exceeds the limit of {limit} bytes")
    filename = Path(file.filename or "upload").name
    head = file.file.read(64)
    file.file.seek(0)
    try:
        fmt = detect_format(filename, head)
    except CheckpointError as e:
        raise invalid(("body", "file"), str(e)) from e
    art_id = new_id("art")
    dest = artifacts.upload_path(art_id, Path(filename).suffix.lower())
    sha, size = hashlib.sha256(), 0
    try:
        with open(dest, "wb") as out:
            while chunk := file.file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise Problem(413, f"upload exceeds the limit of {limit} bytes")
                sha.update(chunk)
                out.write(chunk)
        try:
            meta = inspect_upload(dest, filename)
            if fmt in DATASET_INSPECTORS:
                meta["dataset"] = DATASET_INSPECTORS[fmt](dest).describe()
        except (CheckpointError, DatasetError) as e:
            raise invalid(("body", "file"), str(e)) from e
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    record = {"id": art_id, "tenant": tenant, "filename": filename, "sha256": sha.hexdigest(), "size": size,
              "format": meta.get("format", fmt), "created_at": now_iso(), "path": str(dest), "meta": meta}
    store.put_artifact(record)
    return ArtifactPublic(**record)


@router.get("/{art_id}", response_model=ArtifactPublic, summary="An upload's metadata")
def get_artifact(art_id: str, tenant: TenantDep, store: StoreDep) -> ArtifactPublic:
    meta = store.get_artifact(art_id, tenant)
    if meta is None:
        raise Problem(404, f"no artifact {art_id}")
    return ArtifactPublic(**meta)
