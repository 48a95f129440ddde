"""Server-sent events of a job, served on the event loop (redis.asyncio), not in the threadpool.

A stream mostly waits (a blocking XREAD of up to SSE_BLOCK_MS); done in a worker thread, every open
stream would hold one of the threadpool's few threads, and a hundred followers would starve the
status and submit requests that share the pool.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from worker.store import TERMINAL, P, _event

SSE_BLOCK_MS = 5000


def async_client(url: str) -> aredis.Redis:
    # as JobStore.from_url: socket_timeout above the longest blocking read, retries through a Redis restart
    return aredis.Redis.from_url(url, decode_responses=True, health_check_interval=30, socket_timeout=30,
                                 socket_connect_timeout=5, socket_keepalive=True,
                                 retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=8),
                                 retry_on_error=[aredis.ConnectionError, aredis.TimeoutError])


def _frame(ev: dict) -> str:
    return f"id: {ev['id']}\nevent: {ev['type']}\ndata: {json.dumps({**ev['data'], 'ts': ev['ts']})}\n\n"


def _end(status: str | None) -> str:
    return f"event: end\ndata: {json.dumps({'status': status})}\n\n"


async def job_events(r: aredis.Redis, job_id: str, cursor: str) -> AsyncIterator[str]:
    """Replays events after the cursor, then follows new ones; ends (`event: end`) once the job has ended."""
    key = f"{P}job:{job_id}:events"
    while True:
        res = await r.xread({key: cursor or "0-0"}, count=500, block=SSE_BLOCK_MS)
        rows = [_event(eid, f) for _, entries in res for eid, f in entries]
        for ev in rows:
            cursor = ev["id"]
            yield _frame(ev)
        final = next((ev["data"].get("status") for ev in reversed(rows)
                      if ev["type"] == "status" and ev["data"].get("status") in TERMINAL), None)
        if final is not None:
            yield _end(final)
            return
        if not rows:
            status = await r.hget(f"{P}job:{job_id}", "status")
            if status is None or status in TERMINAL:
                yield _end(status)
                return
            yield ": keep-alive\n\n"
