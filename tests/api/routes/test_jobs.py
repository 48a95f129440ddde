"""The jobs routes in process (FastAPI's TestClient) on a real Redis, with no worker: what each route
answers and what it writes. A worker's part is played through the lifecycle verbs it would call."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from worker.lifecycle import Lifecycle, Status

SPEC = {"student": {"architecture": "mlp", "kwargs": {"hidden": [8]}}, "dataset": {"name": "digits"},
        "distillation": {"method": "none"}, "training": {"epochs": 1}, "resources": {"device": "cpu"}}


@pytest.fixture
def http(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(redis_url=redis_url, data_dir=tmp_path))) as client:
        yield client


def _lifecycle(http: TestClient) -> Lifecycle:
    return http.app.state.lifecycle  # type: ignore[attr-defined]


def test_submit_writes_a_queued_job_and_puts_its_id_on_the_queue(http: TestClient, redis_client) -> None:
    r = http.post("/v1/jobs", json=SPEC)
    assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    job = r.json()
    assert job["status"] == "queued" and job["queue"] == "cpu" and job["spec"]["student"]["architecture"] == "mlp"
    assert redis_client.llen("cpu") == 1 and job["id"] in redis_client.lindex("cpu", 0)  # the Celery message
    assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_device_auto_goes_to_the_gpu_queue_only_when_a_gpu_worker_lives(http: TestClient) -> None:
    auto = {**SPEC, "resources": {"device": "auto"}}
    assert http.post("/v1/jobs", json=auto).json()["queue"] == "cpu"
    _lifecycle(http).store.heartbeat("gpu-1@h", ["gpu"], ttl_s=30)
    assert http.post("/v1/jobs", json=auto).json()["queue"] == "gpu"
    assert http.post("/v1/jobs", json={**SPEC, "resources": {"device": "cuda"}}).json()["queue"] == "gpu"


def test_idempotency_key_returns_the_same_job(http: TestClient, redis_client) -> None:
    a = http.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "k"}).json()
    b = http.post("/v1/jobs", json=SPEC, headers={"Idempotency-Key": "k"}).json()
    assert a["id"] == b["id"] and redis_client.llen("cpu") == 1


def test_list_filters_by_status_and_pages(http: TestClient) -> None:
    ids = [http.post("/v1/jobs", json=SPEC).json()["id"] for _ in range(3)]
    _lifecycle(http).start(ids[0])
    page = http.get("/v1/jobs", params={"limit": 2}).json()
    rest = http.get("/v1/jobs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [j["id"] for j in page["data"] + rest["data"]] == ids[::-1] and rest["next_cursor"] is None
    assert [j["id"] for j in http.get("/v1/jobs", params={"status": "running"}).json()["data"]] == [ids[0]]
    bad = http.get("/v1/jobs", params={"status": "sleeping"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["loc"] == ["query", "status"]
    assert http.get("/v1/jobs", params={"cursor": "1e999999"}).status_code in (200, 422)


def test_cancel_queued_then_ended_then_unknown(http: TestClient) -> None:
    jid = http.post("/v1/jobs", json=SPEC).json()["id"]
    assert http.post(f"/v1/jobs/{jid}/cancel").json()["status"] == "cancelled"
    again = http.post(f"/v1/jobs/{jid}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert http.post("/v1/jobs/job_nope/cancel").status_code == 404


def test_cancel_running_asks_the_worker_to_stop(http: TestClient) -> None:
    jid = http.post("/v1/jobs", json=SPEC).json()["id"]
    _lifecycle(http).start(jid)
    assert http.post(f"/v1/jobs/{jid}/cancel").json()["status"] == "cancelling"
    assert _lifecycle(http).store.cancel_requested(jid)


def test_report_and_downloads_come_when_the_job_has_succeeded(http: TestClient, tmp_path: Path) -> None:
    jid = http.post("/v1/jobs", json=SPEC).json()["id"]
    r = http.get(f"/v1/jobs/{jid}/report")
    assert r.status_code == 409 and "queued" in r.json()["detail"]
    assert http.get(f"/v1/jobs/{jid}/artifacts/student.safetensors").status_code == 404
    out = tmp_path / "artifacts" / "jobs" / jid
    out.mkdir(parents=True)
    (out / "student.safetensors").write_bytes(b"w")
    (out / "peer.safetensors").write_bytes(b"p")
    lc = _lifecycle(http)
    lc.start(jid)
    lc.succeed(jid, {"student": {"top1": 0.9}})
    assert http.get(f"/v1/jobs/{jid}/report").json() == {"student": {"top1": 0.9}}
    got = http.get(f"/v1/jobs/{jid}/artifacts/student.safetensors")
    assert got.status_code == 200 and got.content == b"w"
    assert http.get(f"/v1/jobs/{jid}/artifacts/peer.safetensors").content == b"p"  # a method's further model
    for name in ("report.json", "checkpoint.pt", "..%2F..%2Fsecret.safetensors", "Peer.safetensors"):
        assert http.get(f"/v1/jobs/{jid}/artifacts/{name}").status_code == 404, name
    links = http.get(f"/v1/jobs/{jid}").json()["links"]
    assert links["report"] == f"/v1/jobs/{jid}/report"


def test_events_as_json_with_a_cursor(http: TestClient) -> None:
    jid = http.post("/v1/jobs", json=SPEC).json()["id"]
    lc = _lifecycle(http)
    lc.start(jid)
    lc.fail(jid, "diverged", "lower the lr")
    rows = http.get(f"/v1/jobs/{jid}/events").json()
    assert [e["data"].get("status") for e in rows["data"] if e["type"] == "status"] == ["queued", "running", "failed"]
    after = http.get(f"/v1/jobs/{jid}/events", params={"after": rows["data"][0]["id"]}).json()["data"]
    assert len(after) == len(rows["data"]) - 1
    job = http.get(f"/v1/jobs/{jid}").json()
    assert job["status"] == Status.FAILED and job["error"] == {"code": "diverged", "message": "lower the lr"}
