"""API keys and tenants, on the real app factory with a real Redis (no worker needed to submit)."""
from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from tests.harness import serve_app as serve
from tests.helpers import TINY_SPEC as SPEC
from tests.helpers import npz_bytes as _npz


def test_keys_tenants_and_isolation(redis_url: str, redis_client, tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# key tenant\nk3 gamma\n")
    app = create_app(Settings(redis_url=redis_url, data_dir=tmp_path, api_keys="k1:alpha,k2:beta",
                              api_keys_file=keys_file))
    with TestClient(app) as http:
        assert http.get("/healthz").status_code == 200  # probes need no key
        r = http.post("/v1/jobs", json=SPEC)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.headers["content-type"].startswith("application/problem+json")
        assert http.get("/v1/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        r = http.post("/v1/jobs", json=SPEC, headers={"Authorization": "Bearer k1"})
        assert r.status_code == 202
        jid = r.json()["id"]
        assert http.get(f"/v1/jobs/{jid}", headers={"Authorization": "Bearer k1"}).status_code == 200
        for other in ("k2", "k3"):  # another tenant's job does not exist for them
            h = {"Authorization": f"Bearer {other}"}
            assert http.get(f"/v1/jobs/{jid}", headers=h).status_code == 404
            assert http.post(f"/v1/jobs/{jid}/cancel", headers=h).status_code == 404
            assert http.get("/v1/jobs", headers=h).json()["data"] == []
        art = http.post("/v1/artifacts", files={"file": ("x.npz", _npz())},
                        headers={"Authorization": "Bearer k1"}).json()
        assert http.get(f"/v1/artifacts/{art['id']}", headers={"Authorization": "Bearer k2"}).status_code == 404
        r = http.post("/v1/jobs", json={**SPEC, "dataset": {"name": "npz", "artifact": art["id"]}},
                      headers={"Authorization": "Bearer k2"})
        assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "dataset", "artifact"]


def _outward_address() -> str | None:
    """An address of this machine that is not loopback (no packet is sent to find it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_open_mode_answers_only_connections_to_loopback(redis_url: str, redis_client, tmp_path: Path) -> None:
    """No keys, served by a hand-started uvicorn on 0.0.0.0 (what `distillery` refuses to do): a client
    reaching the machine's outward address is refused, a local one is served."""
    outward = _outward_address()
    if outward is None:
        pytest.skip("this machine has no address but loopback")
    with serve(Settings(redis_url=redis_url, data_dir=tmp_path), host="0.0.0.0") as base:
        port = base.rsplit(":", 1)[1]
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs").status_code == 200
        r = httpx.post(f"http://{outward}:{port}/v1/jobs", json=SPEC)
        assert r.status_code == 403 and "loopback" in r.json()["detail"] and outward in r.json()["detail"]
        assert httpx.get(f"http://{outward}:{port}/v1/jobs").status_code == 403
        assert httpx.get(f"http://{outward}:{port}/healthz").status_code == 200  # probes stay open
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs").json()["data"] == []  # the refused submit wrote nothing


def test_every_route_needs_a_key_and_hides_other_tenants(redis_url: str, redis_client, tmp_path: Path) -> None:
    from worker.lifecycle import Lifecycle
    from worker.store import JobStore, now_iso

    app = create_app(Settings(redis_url=redis_url, data_dir=tmp_path, api_keys="k1:alpha,k2:beta"))
    own, other = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}
    with TestClient(app) as http:
        jid = http.post("/v1/jobs", json=SPEC, headers=own).json()["id"]
        art = http.post("/v1/artifacts", files={"file": ("x.npz", _npz())}, headers=own).json()["id"]
        # the job ends as a worker would end it: its record says succeeded and its outputs are on disk
        lifecycle = Lifecycle(JobStore.from_url(redis_url))
        assert lifecycle.start(jid, started_at=now_iso())
        out = tmp_path / "artifacts" / "jobs" / jid
        out.mkdir(parents=True)
        (out / "student.safetensors").write_bytes(b"weights")
        (out / "report.json").write_text("{}")
        assert lifecycle.succeed(jid, {"student": {}})
        job_routes = [("GET", f"/v1/jobs/{jid}"), ("GET", f"/v1/jobs/{jid}/events"),
                      ("GET", f"/v1/jobs/{jid}/report"), ("POST", f"/v1/jobs/{jid}/cancel"),
                      ("GET", f"/v1/jobs/{jid}/artifacts/student.safetensors"),
                      ("GET", f"/v1/jobs/{jid}/artifacts/report.json"), ("GET", f"/v1/artifacts/{art}")]
        assert http.get(f"/v1/jobs/{jid}/artifacts/student.safetensors", headers=own).content == b"weights"
        assert http.get(f"/v1/artifacts/{art}", headers=own).status_code == 200
        # (/healthz, /readyz and /v1/catalog, which lists only the registries, answer without a key)
        for method, path in [*job_routes, ("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("POST", "/v1/chains")]:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k1"}):
                r = http.request(method, path, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.status_code)
        for method, path in job_routes:  # another tenant's ids do not exist for it
            r = http.request(method, path, headers=other)
            assert r.status_code == 404, (method, path, r.status_code)
            assert r.headers["content-type"].startswith("application/problem+json")
        # an upload without a key is refused before its body is read: nothing is written
        before = sorted((tmp_path / "artifacts" / "uploads").iterdir())
        assert http.post("/v1/artifacts", files={"file": ("y.npz", _npz())}).status_code == 401
        assert sorted((tmp_path / "artifacts" / "uploads").iterdir()) == before
