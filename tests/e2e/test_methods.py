"""Distillation methods through the HTTP API on the digits data: a real Redis, a real Celery worker, the
API under uvicorn. What only the service path shows: a method's params, a schedule and weighted teachers
reach the worker and its report; mutual learning's peer downloads; features from a .pt2 upload (and an
ONNX teacher refused for them); teacher-assistant chains run as linked jobs that wait for each other and
fail together; bad method inputs answer 422 with the field. Whether each method trains a student is
kdcore's to show (tests/kdcore/test_methods.py runs every method on real data)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kdcore.checkpoints import export_onnx, export_program, load_student

RECIPE = {"epochs": 3, "batch_size": 64, "lr": 0.05, "seed": 0}


def job_spec(**over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"student": {"architecture": "mlp", "kwargs": {"hidden": [32]}}, "dataset": {"name": "digits"},
                         "training": RECIPE, "resources": {"device": "cpu"}}
    s.update(over)
    return s


def test_catalog_lists_each_method_with_its_parameters(service) -> None:
    with service.client() as http:
        methods = {m["name"]: m for m in http.get("/v1/catalog").json()["methods"]}
    assert {"none", "kd", "dkd", "fitnets", "at", "dml"} <= set(methods)
    assert methods["dkd"]["params"]["properties"]["beta"]["default"] == 2.0
    assert "pairs" in methods["at"]["params"]["properties"]
    assert "temperature" in methods["kd"]["common"]["schedule"]["properties"]


def test_params_schedule_and_weighted_teachers_reach_the_worker(service, conv_teacher, teacher_job) -> None:
    """dkd with beta 0 (its nckd term must be exactly 0 in every epoch), a cosine temperature schedule and two
    teachers with weights 2:1, all as a client sends them."""
    jid = service.submit(job_spec(teacher=[{"job": conv_teacher["id"], "weight": 2}, {"job": teacher_job["id"]}],
                                  distillation={"method": "dkd", "params": {"beta": 0, "warmup_epochs": 1},
                                                "schedule": {"temperature": {"kind": "cosine", "start": 8,
                                                                             "end": 2}}}))
    job = service.wait(jid)
    assert job["status"] == "succeeded", job["error"]
    rep = service.report(jid)
    assert rep["method"] == "dkd" and rep["student"]["top1"] > 0.6
    assert rep["teacher"]["count"] == 2 and rep["teacher"]["weights"] == [2.0, 1.0]
    assert len(rep["epochs"]) == 3
    assert all(e["losses"]["nckd"] == 0 and e["losses"]["tckd"] > 0 and e["losses"]["hard"] > 0
               for e in rep["epochs"]), rep["epochs"]
    temps = [e["temperature"] for e in rep["epochs"]]
    assert temps[0] > temps[1] > temps[2]


def test_dml_returns_both_students(service, tmp_path: Path) -> None:
    with service.client() as http:
        jid = service.submit(job_spec(distillation={"method": "dml", "alpha": 0.5, "temperature": 1.0}))
        job = service.wait(jid)
        assert job["status"] == "succeeded", job["error"]
        blob = http.get(f"/v1/jobs/{jid}/artifacts/peer.safetensors")
    assert blob.status_code == 200
    (tmp_path / "peer.safetensors").write_bytes(blob.content)
    peer, meta = load_student(tmp_path / "peer.safetensors")
    assert meta["architecture"] == "mlp" and job["report"]["peer"]["top1"] > 0.5


def test_features_from_an_uploaded_pt2_teacher_and_onnx_refused(service, conv_teacher, tmp_path: Path) -> None:
    with service.client() as http:
        blob = http.get(f"/v1/jobs/{conv_teacher['id']}/artifacts/student.safetensors").content
        (tmp_path / "t.safetensors").write_bytes(blob)
        model, _ = load_student(tmp_path / "t.safetensors")
        export_program(model, torch.zeros(2, 1, 8, 8), tmp_path / "t.pt2")
        export_onnx(model, torch.zeros(2, 1, 8, 8), tmp_path / "t.onnx")
        pt2 = http.post("/v1/artifacts", files={"file": ("t.pt2", (tmp_path / "t.pt2").read_bytes())}).json()
        onnx = http.post("/v1/artifacts", files={"file": ("t.onnx", (tmp_path / "t.onnx").read_bytes())}).json()
        jid = service.submit(job_spec(teacher={"checkpoint": pt2["id"]}, distillation={"method": "fitnets"}))
        job = service.wait(jid)
        assert job["status"] == "succeeded", job["error"]
        assert job["report"]["student"]["top1"] > 0.6
        r = http.post("/v1/jobs", json=job_spec(teacher={"checkpoint": onnx["id"]}, distillation={"method": "at"}))
    assert r.status_code == 422
    assert r.json()["errors"][0]["loc"] == ["body", "teacher", "checkpoint"]
    assert "ONNX" in r.json()["errors"][0]["msg"]


def test_teacher_assistant_chain_runs_as_linked_jobs(service, conv_teacher) -> None:
    chain = {"name": "ta", "teacher": {"job": conv_teacher["id"]},
             "assistants": [{"architecture": "mlp", "kwargs": {"hidden": [64]}}],
             "student": {"architecture": "mlp", "kwargs": {"hidden": [16]}},
             "dataset": {"name": "digits"}, "distillation": {"method": "kd"}, "training": RECIPE,
             "resources": {"device": "cpu"}, "baseline": True}
    with service.client() as http:
        r = http.post("/v1/chains", json=chain)
        assert r.status_code == 202, r.text
        first, second = r.json()["jobs"]
        assert r.headers["location"] == f"/v1/jobs/{second['id']}"
        assert second["status"] == "queued" and second["waiting_for"] == [first["id"]]
        assert second["spec"]["teacher"] == {"job": first["id"], "checkpoint": None, "architecture": None,
                                             "kwargs": {}, "weight": 1.0, "input": None, "outputs": "logits"}
        done = service.wait(second["id"])
        assert done["status"] == "succeeded", done["error"]
        a = http.get(f"/v1/jobs/{first['id']}").json()
        assert a["status"] == "succeeded" and a["finished_at"] <= done["started_at"]
        # the assistant taught the student: the teacher the report names is the assistant
        assert done["report"]["teacher"]["top1"] == pytest.approx(a["report"]["student"]["top1"], abs=1e-6)
        assert "kd_gain" in done["report"] and done["waiting_for"] == []
        events = [e["data"].get("message", "") for e in http.get(f"/v1/jobs/{second['id']}/events").json()["data"]]
        assert any("waiting for teacher job" in m for m in events)


def test_a_failed_link_fails_the_links_after_it(service, conv_teacher) -> None:
    chain = {"teacher": {"job": conv_teacher["id"]},
             "assistants": [{"architecture": "mlp", "kwargs": {"hidden": [64]}}],
             "student": {"architecture": "mlp", "kwargs": {"hidden": [16]}}, "dataset": {"name": "digits"},
             "distillation": {"method": "at", "params": {"pairs": [{"teacher": "no_such_layer", "student": "body"}]}},
             "training": RECIPE, "resources": {"device": "cpu"}}
    with service.client() as http:
        first, second = http.post("/v1/chains", json=chain).json()["jobs"]
        a = service.wait(first["id"])
        assert a["status"] == "failed" and a["error"]["code"] == "bad_params"
        assert "no_such_layer" in a["error"]["message"]
        b = service.wait(second["id"], timeout=60)
    assert b["status"] == "failed" and b["error"]["code"] == "teacher_failed"
    assert first["id"] in b["error"]["message"]


def test_bad_method_inputs_are_422_with_the_field(service, conv_teacher) -> None:
    with service.client() as http:
        cases = [
            (job_spec(teacher={"job": conv_teacher["id"]}, distillation={"method": "dkd", "params": {"gamma": 1}}),
             ["body", "distillation", "params"], "gamma"),
            (job_spec(teacher={"job": conv_teacher["id"]},
                      distillation={"method": "kd", "schedule": {"temperature": {"kind": "exp"}}}),
             ["body", "distillation", "schedule", "temperature", "kind"], ""),
            (job_spec(teacher=[{"job": conv_teacher["id"]}, {"job": conv_teacher["id"]}],
                      distillation={"method": "fitnets"}), ["body"], ""),
            (job_spec(distillation={"method": "dml", "params": {"peer_architecture": "nope"}}),
             ["body", "distillation", "params"], "peer_architecture: unknown architecture 'nope'"),
        ]
        for body, loc, msg in cases:
            r = http.post("/v1/jobs", json=body)
            assert r.status_code == 422, r.text
            assert any(e["loc"][:len(loc)] == loc and msg in e["msg"] for e in r.json()["errors"]), \
                (loc, r.json()["errors"])
        bad_chain = http.post("/v1/chains", json={"teacher": {"job": conv_teacher["id"]}, "assistants": [],
                                                  "student": {"architecture": "mlp"}, "dataset": {"name": "digits"}})
        assert bad_chain.status_code == 422 and bad_chain.json()["errors"][0]["loc"][:2] == ["body", "assistants"]
