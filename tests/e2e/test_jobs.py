"""Whole jobs through the HTTP API: a real Redis, a real Celery worker, the API under uvicorn.

Trains a teacher on labels alone (method none), distills it into a smaller mlp with kd (with a
baseline), follows the events to the end, downloads the student and checks it independently;
uploads teachers as .safetensors, .pt2 and .onnx and distills from each; cancels a running job;
and checks the 4xx answers.
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import save_file

from kdcore.checkpoints import export_onnx, export_program, load_student
from kdcore.datasets import load_dataset
from kdcore.evaluate import evaluate
from tests.helpers import TEACHER_HIDDEN, kd_spec, spec, sse_events


def test_catalog_lists_registries(service) -> None:
    with service.client() as http:
        cat = http.get("/v1/catalog").json()
    names = {k: {e["name"] for e in cat[k]} for k in ("architectures", "datasets", "methods")}
    assert {"mlp", "lenet5", "cifar_resnet20", "cifar_resnet56", "wrn_40_2", "resnet18"} <= names["architectures"]
    assert {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "npz"} <= names["datasets"]
    assert {"none", "kd"} <= names["methods"]
    mnist = next(d for d in cat["datasets"] if d["name"] == "mnist")
    assert mnist["format"]["input_shape"] == [1, 28, 28] and mnist["format"]["mean"]


def test_teacher_then_kd_student_end_to_end(service, teacher_job, dataset_root: Path) -> None:
    t_report = teacher_job["report"]
    assert t_report["student"]["top1"] > 0.9 and "teacher" not in t_report
    with service.client() as http:
        jid = service.submit(kd_spec({"job": teacher_job["id"]}, baseline=True))
        events = sse_events(http, jid)
        kinds = [k for k, _ in events]
        assert "progress" in kinds and "epoch" in kinds and kinds[-1] == "end"
        assert events[-1][1]["status"] == "succeeded"
        prog = next(d for k, d in events if k == "progress")
        assert {"epoch", "epochs", "step", "steps", "fraction", "eta_s", "loss"} <= prog.keys()
        job = http.get(f"/v1/jobs/{jid}").json()
        assert job["status"] == "succeeded" and job["progress"]["fraction"] == 1.0
        assert job["metrics"]["test_top1"] > 0 and job["started_at"] and job["finished_at"]
        rep = http.get(f"/v1/jobs/{jid}/report").json()
        # JSON events, with a cursor
        ev = http.get(f"/v1/jobs/{jid}/events").json()
        assert ev["data"] and ev["data"][0]["type"] == "status"
        later = http.get(f"/v1/jobs/{jid}/events", params={"after": ev["data"][0]["id"]}).json()["data"]
        assert len(later) == len(ev["data"]) - 1
        blob = http.get(f"/v1/jobs/{jid}/artifacts/student.safetensors")
        assert blob.status_code == 200
        assert http.get(f"/v1/jobs/{jid}/artifacts/report.json").json()["student"] == rep["student"]
        assert http.get(f"/v1/jobs/{jid}/artifacts/curves.png").content[:4] == b"\x89PNG"
        listing = http.get("/v1/jobs", params={"limit": 1}).json()
        assert listing["data"][0]["id"] == jid and listing["next_cursor"]

    for key in ("teacher", "student", "agreement", "compression", "baseline", "kd_gain", "epochs",
                "device", "wall_seconds"):
        assert key in rep, key
    assert rep["teacher"]["top1"] == pytest.approx(t_report["student"]["top1"], abs=1e-6)
    assert rep["student"]["top1"] > 0.85
    assert rep["compression"] == pytest.approx(rep["teacher"]["params"] / rep["student"]["params"], rel=1e-3)
    assert rep["teacher"]["params"] > 10 * rep["student"]["params"]
    assert rep["kd_gain"] == pytest.approx(rep["student"]["top1"] - rep["baseline"]["top1"], abs=1e-6)
    assert len(rep["epochs"]) == 6 and {"epoch", "train_loss", "test_top1", "seconds", "eval_seconds"} <= \
        rep["epochs"][0].keys()
    assert rep["student"]["size_bytes"] == len(blob.content)

    # The downloaded student, loaded without the service, scores what the report says.
    path = service.data_dir / "downloaded.safetensors"
    path.write_bytes(blob.content)
    model, meta = load_student(path)
    assert meta["architecture"] == "mlp" and meta["kwargs"] == {"hidden": [32]}
    data = load_dataset("digits", dataset_root)
    ev = evaluate(model, data.test, torch.device("cpu"))
    assert ev["top1"] == pytest.approx(rep["student"]["top1"], abs=1.5 / len(data.y_test))


@pytest.mark.parametrize("fmt", ["safetensors", "pt2", "onnx"])
def test_uploaded_teacher_formats(service, teacher_job, fmt: str, tmp_path: Path) -> None:
    with service.client() as http:
        blob = http.get(f"/v1/jobs/{teacher_job['id']}/artifacts/student.safetensors").content
        src = tmp_path / "teacher_student.safetensors"
        src.write_bytes(blob)
        model, _ = load_student(src)
        example = torch.zeros(2, 1, 8, 8)
        path = tmp_path / f"teacher.{fmt}"
        teacher: dict[str, Any]
        if fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        elif fmt == "pt2":
            export_program(model, example, path)
        else:
            export_onnx(model, example, path)
        r = http.post("/v1/artifacts", files={"file": (path.name, path.read_bytes())})
        assert r.status_code == 201, r.text
        art = r.json()
        assert art["size"] == path.stat().st_size and len(art["sha256"]) == 64
        assert http.get(f"/v1/artifacts/{art['id']}").json()["format"] == art["format"]
        teacher = {"checkpoint": art["id"]}
        if fmt == "safetensors":
            teacher.update(architecture="mlp", kwargs={"hidden": TEACHER_HIDDEN})
        jid = service.submit(kd_spec(teacher, epochs=3))
        job = service.wait(jid)
        assert job["status"] == "succeeded", job["error"]
        rep = job["report"]
        # the same network in another container scores the same on the same test split
        assert rep["teacher"]["top1"] == pytest.approx(teacher_job["report"]["student"]["top1"], abs=1e-6)
        assert rep["student"]["top1"] > 0.5


def test_cancel_running_job(service) -> None:
    with service.client() as http:
        jid = service.submit(spec(training={"epochs": 500, "batch_size": 16, "lr": 0.01}))
        service.wait(jid, 120, states=("running",))
        assert http.get(f"/v1/jobs/{jid}/report").status_code == 409
        r = http.post(f"/v1/jobs/{jid}/cancel")
        assert r.status_code == 202 and r.json()["status"] in ("cancelling", "cancelled")
        job = service.wait(jid, 10)
        assert job["status"] == "cancelled"
        assert any(e["type"] == "progress" for e in http.get(f"/v1/jobs/{jid}/events").json()["data"])
        assert http.post(f"/v1/jobs/{jid}/cancel").status_code == 409


def test_bad_input_answers(service, teacher_job) -> None:
    with service.client() as http:
        before = len(http.get("/v1/jobs", params={"limit": 200}).json()["data"])

        def problem(r: httpx.Response, status: int) -> dict[str, Any]:
            assert r.status_code == status, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            body = r.json()
            assert body["status"] == status and body["title"] and body["detail"]
            return body

        body = problem(http.post("/v1/jobs", json=spec(student={"architecture": "no_such_net"})), 422)
        assert body["errors"][0]["loc"] == ["body", "student", "architecture"]
        assert "no_such_net" in body["detail"] and "mlp" in body["detail"]
        body = problem(http.post("/v1/jobs", json=spec(dataset={"name": "imagenet_please"})), 422)
        assert body["errors"][0]["loc"] == ["body", "dataset", "name"] and "digits" in body["detail"]
        body = problem(http.post("/v1/jobs", json=spec(distillation={"method": "magic"})), 422)
        assert body["errors"][0]["loc"] == ["body", "distillation", "method"] and "kd" in body["detail"]
        t = {"job": teacher_job["id"]}
        body = problem(http.post("/v1/jobs", json=kd_spec(t) | {"distillation": {"method": "kd", "alpha": 1.5}}), 422)
        assert body["errors"][0]["loc"] == ["body", "distillation", "alpha"]
        body = problem(http.post("/v1/jobs", json=kd_spec(t) | {"distillation": {"method": "kd", "temperature": 0}}),
                       422)
        assert body["errors"][0]["loc"] == ["body", "distillation", "temperature"]
        body = problem(http.post("/v1/jobs", json=spec(training={"epochs": 2, "bogus": 1})), 422)
        assert body["errors"][0]["loc"] == ["body", "training", "bogus"]
        # a kwarg contradicting the dataset, and a teacher with the wrong class count
        body = problem(http.post("/v1/jobs", json=spec(student={"architecture": "mlp",
                                                              "kwargs": {"num_classes": 3}})), 422)
        assert body["errors"][0]["loc"][:3] == ["body", "student", "kwargs"] and "contradicts" in body["detail"]
        wrong = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7))
        buf = io.BytesIO()
        torch.save(wrong.state_dict(), buf)
        art = http.post("/v1/artifacts", files={"file": ("wrong.pt", buf.getvalue())}).json()
        exported = service.data_dir / "wrong7.onnx"
        export_onnx(wrong, torch.zeros(1, 1, 8, 8), exported)
        art7 = http.post("/v1/artifacts", files={"file": ("wrong7.onnx", exported.read_bytes())}).json()
        body = problem(http.post("/v1/jobs", json=kd_spec({"checkpoint": art7["id"]})), 422)
        assert body["errors"][0]["loc"] == ["body", "teacher", "checkpoint"] and "7 classes" in body["detail"]
        body = problem(http.post("/v1/jobs", json=kd_spec({"checkpoint": art["id"]})), 422)
        assert body["errors"][0]["loc"] == ["body", "teacher", "architecture"]
        body = problem(http.post("/v1/jobs", json=kd_spec({"checkpoint": "art_nope"})), 422)
        assert body["errors"][0]["loc"] == ["body", "teacher", "checkpoint"]
        # uploads that are not checkpoints
        body = problem(http.post("/v1/artifacts", files={"file": ("t.safetensors", b"not a safetensors file")}), 422)
        assert body["errors"][0]["loc"] == ["body", "file"]
        problem(http.post("/v1/artifacts", files={"file": ("t.exe", b"MZ")}), 422)
        problem(http.post("/v1/artifacts", files={"file": ("t.onnx", b"\x00garbage")}), 422)
        # unknown ids, early report
        problem(http.get("/v1/jobs/job_does_not_exist"), 404)
        problem(http.get("/v1/jobs/job_does_not_exist/events"), 404)
        problem(http.post("/v1/jobs/job_does_not_exist/cancel"), 404)
        problem(http.get("/v1/artifacts/art_does_not_exist"), 404)
        problem(http.get(f"/v1/jobs/{teacher_job['id']}/artifacts/../../etc/passwd"), 404)
        problem(http.get(f"/v1/jobs/{teacher_job['id']}/artifacts/checkpoint.pt"), 404)
        # nothing was created by any of the refused submissions
        assert len(http.get("/v1/jobs", params={"limit": 200}).json()["data"]) == before


def test_idempotency_key_returns_the_same_job(service) -> None:
    with service.client() as http:
        s = spec(training={"epochs": 1, "batch_size": 64, "lr": 0.05})
        a = http.post("/v1/jobs", json=s, headers={"Idempotency-Key": "abc-1"}).json()
        b = http.post("/v1/jobs", json=s, headers={"Idempotency-Key": "abc-1"}).json()
        assert a["id"] == b["id"]
        assert service.wait(a["id"])["status"] == "succeeded"


def test_health_and_docs(service) -> None:
    with service.client() as http:
        assert http.get("/healthz").status_code == 200
        ready = http.get("/readyz").json()
        assert ready["status"] == "ready" and ready["workers"]
        schema = http.get("/openapi.json").json()
        assert "/v1/jobs" in schema["paths"] and "JobSpec" in json.dumps(schema)
        assert http.get("/docs").status_code == 200


def test_uploaded_datasets_npz_and_imagefolder(service, tmp_path: Path) -> None:
    import zipfile

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    img = (x.reshape(-1, 8, 8) * 15).astype(np.uint8)
    npz = tmp_path / "digits.npz"
    np.savez(npz, x_train=img[:1400], y_train=y[:1400], x_test=img[1400:], y_test=y[1400:])
    archive = tmp_path / "digits.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for split, idx in (("train", range(0, 400)), ("test", range(1400, 1500))):
            for i in idx:
                buf = io.BytesIO()
                Image.fromarray(img[i]).save(buf, format="PNG")
                zf.writestr(f"{split}/digit{y[i]}/{i}.png", buf.getvalue())
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/a/zeros.png", b"\0" * (64 << 20))
    def stores() -> set[str]:  # other tests of the session prepare their own uploads
        root = service.data_dir / "prepared"
        return {p.name for p in root.iterdir() if not p.name.startswith(".")} if root.is_dir() else set()

    before = stores()
    with service.client() as http:
        ids = {}
        for name, path in (("npz", npz), ("imagefolder", archive)):
            r = http.post("/v1/artifacts", files={"file": (path.name, path.read_bytes())})
            assert r.status_code == 201, r.text
            assert r.json()["format"] == name and r.json()["meta"]["dataset"]["num_classes"] == 10
            ids[name] = r.json()["id"]
        r = http.post("/v1/artifacts", files={"file": ("bomb.zip", bomb.read_bytes())})
        assert r.status_code == 422 and "expand" in r.json()["detail"]
        wrong = http.post("/v1/jobs", json=spec(dataset={"name": "npz", "artifact": ids["imagefolder"]}))
        assert wrong.status_code == 422 and wrong.json()["errors"][0]["loc"] == ["body", "dataset", "artifact"]
        for name, art in ids.items():
            jid = service.submit(spec(dataset={"name": name, "artifact": art},
                                            training={"epochs": 4, "batch_size": 32, "lr": 0.05}))
            job = service.wait(jid)
            assert job["status"] == "succeeded", job["error"]
            assert job["report"]["student"]["top1"] > 0.5
        # both uploads were streamed: prepared once into the store (a visible phase; the .npz as given), read
        # from disk batch by batch; a second job on the same upload reuses the store without decoding again
        prepared = stores() - before
        assert len(prepared) == 2 and all((service.data_dir / "prepared" / p / "train_x.npy").is_file()
                                          for p in prepared)
        events = service.events(jid)
        steps = [e["data"] for e in events if e["type"] == "progress" and e["data"].get("phase") == "prepare"]
        assert steps and steps[-1]["step"] == steps[-1]["steps"] == 500, steps
        assert any("prepared dataset" in e["data"].get("message", "") for e in events if e["type"] == "log")
        again = service.wait(service.submit(spec(dataset={"name": "imagefolder", "artifact": ids["imagefolder"]},
                                                 training={"epochs": 1, "batch_size": 32, "lr": 0.05})))
        assert again["status"] == "succeeded"
        assert not [e for e in service.events(again["id"]) if e["data"].get("phase") == "prepare"]
        # another resolution and RGB: a second prepared store, and the student is built for that input
        resized = service.wait(service.submit(spec(
            dataset={"name": "imagefolder", "artifact": ids["imagefolder"], "image_size": [12, 16], "channels": 3},
            training={"epochs": 1, "batch_size": 32, "lr": 0.05})))
        assert resized["status"] == "succeeded", resized["error"]
        assert len(stores() - before) == 3
        assert any("at 12x16" in e["data"].get("message", "") for e in service.events(resized["id"]))
        bad = http.post("/v1/jobs", json=spec(dataset={"name": "digits", "image_size": [32, 32]}))
        assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["body", "dataset"], bad.json()
