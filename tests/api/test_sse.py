"""The server-sent event stream (api/sse.py) on a real Redis: replay after a cursor, follow, keep-alive
while idle, and one `end` frame once the job has ended."""
from __future__ import annotations

import asyncio
import json

import pytest
import redis

from api import sse
from api.reads import async_client
from worker.lifecycle import Lifecycle
from worker.store import JobStore


async def _collect(redis_url: str, job_id: str, cursor: str, until: int) -> list[str]:
    client = async_client(redis_url)
    frames: list[str] = []
    try:
        async for frame in sse.job_events(client, job_id, cursor):
            frames.append(frame)
            if len(frames) >= until:
                break
    finally:
        await client.aclose()
    return frames


def test_replays_then_ends_with_the_final_status(redis_url: str, redis_client: redis.Redis) -> None:
    lc = Lifecycle(JobStore(redis_client), lambda job_id, queue: None)
    rec, _ = lc.submit("t", {}, "cpu")
    lc.start(rec["id"])
    lc.store.add_event(rec["id"], "progress", {"step": 1})
    lc.succeed(rec["id"], {})
    frames = asyncio.run(_collect(redis_url, rec["id"], "0-0", until=100))
    kinds = [f.split("\n")[1].removeprefix("event: ") for f in frames if f.startswith("id: ")]
    assert kinds == ["status", "status", "progress", "status"]
    assert frames[-1] == f"event: end\ndata: {json.dumps({'status': 'succeeded'})}\n\n"
    first_id = frames[0].split("\n")[0].removeprefix("id: ")
    later = asyncio.run(_collect(redis_url, rec["id"], first_id, until=100))
    assert len(later) == len(frames) - 1  # the cursor skips what the client has seen


def test_keep_alive_while_idle_and_end_for_a_job_gone(redis_url: str, redis_client: redis.Redis,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "SSE_BLOCK_MS", 50)
    lc = Lifecycle(JobStore(redis_client), lambda job_id, queue: None)
    rec, _ = lc.submit("t", {}, "cpu")
    frames = asyncio.run(_collect(redis_url, rec["id"], "0-0", until=3))
    assert frames[0].startswith("id: ") and frames[1:] == [": keep-alive\n\n"] * 2
    assert asyncio.run(_collect(redis_url, "job_gone", "0-0", until=5)) == ["event: end\ndata: {\"status\": null}\n\n"]
