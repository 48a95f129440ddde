"""A job with `export` through the whole service: the export phase runs in the real worker after training,
its report section says the program matched the student, and the file downloads through the artifacts
route and computes what the downloaded student computes. (ONNX and int8 are exercised in
tests/kdcore/test_export_phase.py: the ONNX exporter alone takes several seconds.)"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from kdcore.checkpoints import load_student
from kdcore.datasets import load_dataset
from tests.harness import Stack
from tests.helpers import kd_spec


def test_a_job_exports_a_checked_program_and_times_teacher_and_student(service: Stack, teacher_job: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    spec = kd_spec({"job": teacher_job["id"]}, epochs=1, export={"formats": ["pt2"], "latency": True})
    job = service.wait(service.submit(spec))
    assert job["status"] == "succeeded", job["error"]
    export = job["report"]["export"]
    assert export["pt2"]["file"] == "student.pt2" and export["pt2"]["parity"] and "onnx" not in export
    for bs in ("1", "64"):
        row = export["latency"]["batches"][bs]
        assert row["student_ms"] > 0 and row["teacher_ms"] > 0 and row["speedup"] > 0
    assert export["latency"]["device"] == "cpu"
    assert any(e["type"] == "phase" and e["data"]["phase"] == "export" for e in service.events(job["id"]))
    with service.client() as http:
        base = f"/v1/jobs/{job['id']}/artifacts"
        program = http.get(f"{base}/student.pt2")
        assert program.status_code == 200 and len(program.content) == export["pt2"]["size_bytes"]
        assert http.get(f"{base}/student.onnx").status_code == 404  # not asked for
        assert http.get(f"/v1/jobs/{job['id']}").json()["links"]["student_pt2"] == f"{base}/student.pt2"
        (tmp_path / "student.safetensors").write_bytes(http.get(f"{base}/student.safetensors").content)
    module, _ = load_student(tmp_path / "student.safetensors")
    x = load_dataset("digits", tmp_path).test.head(100).float()
    with torch.inference_mode():
        got = torch.export.load(io.BytesIO(program.content)).module()(x)
        torch.testing.assert_close(got, module(x), atol=1e-4, rtol=1e-3)
