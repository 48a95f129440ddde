"""Server-sent events of a job, served on the event loop (redis.asyncio), not in the threadpool.

A stream mostly waits (a blocking XREAD of up to SSE_BLOCK_MS); done in a worker thread, every open
stream would hold one of the threadpool's few threads, and a hundred followers would starve the
status and submit requests that share the pool.
"""
from __future__ import annotations

import json
from collections.abc import AsyncIterator

import redis.asyncio as aredis

from worker import keys
from worker.lifecycle import TERMINAL
from worker.store import event_row

SSE_BLOCK_MS = 5000


def _frame(ev: dict) -> str:
    return f"id: {ev['id']}\nevent: {ev['type']}\ndata: {json.dumps({**ev['data'], 'ts': ev['ts']})}\n\n"


def _end(status: str | None) -> str:
    return f"event: end\ndata: {json.dumps({'status': status})}\n\n"


async def job_events(r: aredis.Redis, job_id: str, cursor: str) -> AsyncIterator[str]:
    """Replays events after the cursor, then follows new ones; ends (`event: end`) once the job has ended."""
    key = keys.events(job_id)
    while True:
        res = await r.xread({key: cursor or "0-0"}, count=500, block=SSE_BLOCK_MS)
        rows = [event_row(eid, f) for _, entries in res for eid, f in entries]
        for ev in rows:
            cursor = ev["id"]
            yield _frame(ev)
        final = next((ev["data"].get("status") for ev in reversed(rows)
                      if ev["type"] == "status" and ev["data"].get("status") in TERMINAL), None)
        if final is not None:
            yield _end(final)
            return
        if not rows:
            status = await r.hget(keys.job(job_id), "status")
            if status is None or status in TERMINAL:
                yield _end(status)
                return
            yield ": keep-alive\n\n"
