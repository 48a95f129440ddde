"""Per-tenant limits on open jobs (429) and stored upload bytes (413), provoked with concurrent requests
against a real uvicorn and a real Redis (no worker: submitted jobs stay queued)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import redis

from api.settings import Settings
from tests.harness import serve_app as serve
from tests.helpers import TINY_SPEC as SPEC
from tests.helpers import npz_bytes as _npz

A = {"Authorization": "Bearer ka"}
B = {"Authorization": "Bearer kb"}


async def _burst(base: str, n: int, headers: dict[str, str], **kw) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        return await asyncio.gather(*(http.post("/v1/jobs", json=SPEC, headers=headers, **kw) for _ in range(n)))


def test_open_jobs_limit_holds_under_a_concurrent_burst(redis_url: str, redis_client: redis.Redis,
                                                        tmp_path: Path) -> None:
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, api_keys="ka:alpha,kb:beta",
                        max_active_jobs_per_tenant=4)
    with serve(settings) as base:
        answers = asyncio.run(_burst(base, 20, A))
        codes = sorted(r.status_code for r in answers)
        assert codes == [202] * 4 + [429] * 16
        refused = next(r for r in answers if r.status_code == 429)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert int(refused.headers["retry-after"]) > 0
        assert "limit is 4" in refused.json()["detail"] and "KD_MAX_ACTIVE_JOBS_PER_TENANT" in refused.json()["detail"]
        # a refused submission wrote nothing: exactly the admitted jobs exist
        assert redis_client.zcard("kd:jobs:alpha") == 4
        with httpx.Client(base_url=base, timeout=60) as http:
            listed = http.get("/v1/jobs", headers=A, params={"limit": 50}).json()["data"]
            assert len(listed) == 4
            # another tenant has its own allowance
            assert http.post("/v1/jobs", json=SPEC, headers=B).status_code == 202
            # an ended job frees its slot: cancel one (queued -> cancelled at once), then one more fits
            assert http.post(f"/v1/jobs/{listed[0]['id']}/cancel", headers=A).json()["status"] == "cancelled"
            assert http.post("/v1/jobs", json=SPEC, headers=A).status_code == 202
            assert http.post("/v1/jobs", json=SPEC, headers=A).status_code == 429
            # replaying an Idempotency-Key answers the earlier job even at the limit
            key = {"Idempotency-Key": "same", **B}
            first = http.post("/v1/jobs", json=SPEC, headers=key)
            assert first.status_code == 202
            for _ in range(5):
                again = http.post("/v1/jobs", json=SPEC, headers=key)
                assert again.status_code == 202 and again.json()["id"] == first.json()["id"]


def test_chain_links_are_admitted_all_or_none(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, max_active_jobs_per_tenant=2)
    chain = {"teacher": {"job": "placeholder"}, "assistants": [{"architecture": "mlp", "kwargs": {"hidden": [64]}}],
             "student": {"architecture": "mlp", "kwargs": {"hidden": [16]}}, "dataset": {"name": "digits"},
             "distillation": {"method": "kd"}, "training": {"epochs": 1}, "resources": {"device": "cpu"}}
    with serve(settings) as base, httpx.Client(base_url=base, timeout=60) as http:
        teacher = http.post("/v1/jobs", json=SPEC)
        assert teacher.status_code == 202
        r = http.post("/v1/chains", json={**chain, "teacher": {"job": teacher.json()["id"]}})
        assert r.status_code == 429, r.text  # 1 open + 2 links > 2: no link is written
        assert redis_client.zcard("kd:jobs:default") == 1


async def _uploads(base: str, n: int, body: bytes) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        return await asyncio.gather(*(http.post("/v1/artifacts", files={"file": (f"d{i}.npz", body)}, headers=A)
                                      for i in range(n)))


def test_upload_quota_holds_under_concurrent_uploads(redis_url: str, redis_client: redis.Redis,
                                                     tmp_path: Path) -> None:
    body = _npz()
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, api_keys="ka:alpha,kb:beta",
                        max_tenant_upload_bytes=int(len(body) * 2.5))
    with serve(settings) as base:
        answers = asyncio.run(_uploads(base, 8, body))
        assert sorted(r.status_code for r in answers) == [201] * 2 + [413] * 6
        refused = next(r for r in answers if r.status_code == 413)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert "KD_MAX_TENANT_UPLOAD_BYTES" in refused.json()["detail"]
        stored = sorted((tmp_path / "artifacts" / "uploads").iterdir())
        kept = {r.json()["id"] for r in answers if r.status_code == 201}
        # refused uploads leave neither a file nor a record; the counter holds exactly what is stored
        assert {p.stem for p in stored} == kept
        assert {k.removeprefix("kd:artifact:") for k in redis_client.scan_iter("kd:artifact:*")} == kept
        assert int(redis_client.get("kd:tenant:alpha:upload_bytes")) == 2 * len(body)
        assert redis_client.hlen("kd:tenant:alpha:upload_inflight") == 0
        with httpx.Client(base_url=base, timeout=60) as http:  # the other tenant's quota is its own
            r = http.post("/v1/artifacts", files={"file": ("d.npz", body)}, headers=B)
            assert r.status_code == 201
            # a bad upload (not a dataset) is refused and gives its bytes back
            bad = http.post("/v1/artifacts", files={"file": ("x.npz", b"PK\x03\x04" + b"\0" * 500)}, headers=B)
            assert bad.status_code == 422
            assert int(redis_client.get("kd:tenant:beta:upload_bytes")) == len(body)
            assert redis_client.hlen("kd:tenant:beta:upload_inflight") == 0
