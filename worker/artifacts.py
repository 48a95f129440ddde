"""The artifact store: uploads and job outputs, on a local directory (by default shared by the API and every
worker) and, when a shared storage is configured (worker/storage.py, KD_STORAGE_URL), published there and
fetched back on first use by any host.

Uploads live under uploads/<id><ext> and job outputs under jobs/<job id>/<name>; paths are always
built from ids we generated and a fixed list of output names, never from what a client sent.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from worker.storage import Storage

# What a finished job offers for download, with the media type each is served as.
JOB_OUTPUTS = {
    "student.safetensors": "application/octet-stream",
    "report.json": "application/json",
    "curves.png": "image/png",
    # deployable students, with `export` in the spec (kdcore/export_phase.py)
    "student.onnx": "application/octet-stream",
    "student.pt2": "application/octet-stream",
    "student.int8.onnx": "application/octet-stream",
}
# Further trained models a method saves beside the student (DML's `peer.safetensors`): any plain name.
# The pattern keeps every such path inside the job's directory whatever a client asks for.
EXTRA_MODEL = re.compile(r"^[a-z][a-z0-9_]{0,40}\.safetensors$")


def output_media_type(name: str) -> str | None:
    """The media type a job output is served as; None for a name a job never offers."""
    if name in JOB_OUTPUTS:
        return JOB_OUTPUTS[name]
    return "application/octet-stream" if EXTRA_MODEL.match(name) else None


class ArtifactStore:
    def __init__(self, root: Path, storage: Storage | None = None):
        self.root = Path(root)
        self.storage = storage or Storage()

    def upload_path(self, art_id: str, ext: str) -> Path:
        d = self.root / "uploads"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{art_id}{ext}"

    def publish_upload(self, path: Path) -> None:
        """Puts an upload that passed its checks into the shared storage (before its record is written)."""
        self.storage.publish(path, "uploads", path.name)

    def local_upload(self, art: dict[str, Any]) -> Path:
        """The upload's file on this host: where the API wrote it when this host sees that folder, else fetched
        from the shared storage into this host's uploads/ (its path as recorded otherwise: the caller's
        missing-file error names it)."""
        recorded = Path(art["path"])
        if recorded.exists() or not self.storage.shared:
            return recorded
        local = self.root / "uploads" / recorded.name
        return local if self.storage.fetch(local, "uploads", recorded.name) else recorded

    def publish_job(self, job_id: str) -> None:
        """Puts a finished job's outputs (those a client may download) into the shared storage."""
        d = self.job_dir(job_id)
        for f in sorted(d.iterdir()) if self.storage.shared and d.is_dir() else []:
            if f.is_file() and output_media_type(f.name) is not None:
                self.storage.publish(f, "jobs", job_id, f.name)

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def job_output(self, job_id: str, name: str) -> Path | None:
        """The path of a finished job's output, or None for a name not offered or not written."""
        if output_media_type(name) is None:
            return None
        p = self.job_dir(job_id) / name
        return p if p.is_file() or self.storage.fetch(p, "jobs", job_id, name) else None

    def drop_job_scratch(self, job_id: str) -> None:
        """Removes what only a resume needs (the epoch checkpoint, kdcore.train.CHECKPOINT) once the job has ended."""
        for name in ("checkpoint.pt", "checkpoint.tmp"):
            (self.job_dir(job_id) / name).unlink(missing_ok=True)

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        self.storage.remove("jobs", job_id)
