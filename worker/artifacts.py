"""The artifact store: files on a directory shared by the API and every worker.

Uploads live under uploads/<id><ext> and job outputs under jobs/<job id>/<name>; paths are always
built from ids we generated and a fixed list of output names, never from what a client sent.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

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
    def __init__(self, root: Path):
        self.root = Path(root)

    def upload_path(self, art_id: str, ext: str) -> Path:
        d = self.root / "uploads"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{art_id}{ext}"

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def job_output(self, job_id: str, name: str) -> Path | None:
        """The path of a finished job's output, or None for a name not offered or not written."""
        if output_media_type(name) is None:
            return None
        p = self.job_dir(job_id) / name
        return p if p.is_file() else None

    def drop_job_scratch(self, job_id: str) -> None:
        """Removes what only a resume needs (the epoch checkpoint, kdcore.train.CHECKPOINT) once the job has ended."""
        for name in ("checkpoint.pt", "checkpoint.tmp"):
            (self.job_dir(job_id) / name).unlink(missing_ok=True)

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
