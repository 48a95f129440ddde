"""How the API serves, apart from what it answers: reads on the event loop agree with the store, every
response says its server time, a small threadpool, and a start that waits for nobody."""
from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import anyio.to_thread
from fastapi.testclient import TestClient

from api.main import create_app
from api.reads import AsyncReads, async_client
from api.settings import Settings
from distillery.redis_server import free_port
from worker.lifecycle import Lifecycle
from worker.store import JobStore

SPEC = {"student": {"architecture": "mlp", "kwargs": {"hidden": [8]}}, "dataset": {"name": "digits"},
        "distillation": {"method": "none"}, "training": {"epochs": 1}, "resources": {"device": "cpu"}}
TIMING = re.compile(r"^app;dur=\d+\.\d\d$")


def test_async_reads_return_what_the_store_wrote(redis_url: str, redis_client) -> None:
    store = JobStore(redis_client)
    rec, _ = Lifecycle(store, lambda job_id, queue: None).submit("alpha", {"x": 1}, "cpu", "n")
    store.add_event(rec["id"], "log", {"message": "hi"})

    async def read() -> tuple:
        client = async_client(redis_url)
        try:
            reads = AsyncReads(client)
            return (await reads.get_job(rec["id"], "alpha"), await reads.get_job(rec["id"], "beta"),
                    await reads.get_job("job_missing"), await reads.events(rec["id"]),
                    await reads.events(rec["id"], after=store.events(rec["id"])[0]["id"]))
        finally:
            await client.aclose()

    mine, others, missing, events, after_first = asyncio.run(read())
    assert mine == store.get_job(rec["id"], "alpha") and mine["spec"] == {"x": 1} and mine["attempts"] == 0
    assert others is None and missing is None  # another tenant's job reads as absent
    assert events == store.events(rec["id"]) and [e["type"] for e in events] == ["status", "log"]
    assert [e["data"] for e in after_first] == [{"message": "hi"}]


def test_every_response_carries_server_timing(redis_url: str, redis_client, tmp_path: Path) -> None:
    with TestClient(create_app(Settings(redis_url=redis_url, data_dir=tmp_path))) as http:
        job = http.post("/v1/jobs", json=SPEC)
        responses = [job, http.get(f"/v1/jobs/{job.json()['id']}"), http.get("/v1/jobs/job_nope"),
                     http.get("/healthz"), http.post("/v1/jobs", json={"student": 1})]
        assert [r.status_code for r in responses] == [202, 200, 404, 200, 422]
        for r in responses:
            assert TIMING.match(r.headers["server-timing"]), r.headers.get("server-timing")


def test_threadpool_is_sized_by_settings(redis_url: str, tmp_path: Path) -> None:
    with TestClient(create_app(Settings(redis_url=redis_url, data_dir=tmp_path, api_threads=3))) as http:
        tokens = http.portal.call(lambda: anyio.to_thread.current_default_thread_limiter().total_tokens)
        assert tokens == 3


def test_starts_at_once_while_redis_is_not_up(tmp_path: Path) -> None:
    """The warm-up runs in the background: an API started before its Redis serves probes at once."""
    nothing_there = f"redis://127.0.0.1:{free_port()}/0"
    t0 = time.monotonic()
    with TestClient(create_app(Settings(redis_url=nothing_there, data_dir=tmp_path))) as http:
        assert http.get("/healthz").status_code == 200
        assert time.monotonic() - t0 < 5
