"""The API's hot reads (job status, events, report) on the event loop with redis.asyncio.

A plain `def` route runs in the threadpool: every status poll would take a thread hop and then compete
for the GIL with the threads serving a burst of submits. Read here, a poll is one HGETALL awaited on
the loop, so polling stays fast while submits are being written (benchmarks/load.py measures it).
Writes stay on the synchronous JobStore, whose Lua scripts and pipelines they share with the worker.
"""
from __future__ import annotations

from typing import Any

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from worker.store import event_row, events_key, job_key, job_record


def async_client(url: str) -> aredis.Redis:
    # as JobStore.from_url: socket_timeout above the longest blocking read, retries through a Redis restart
    return aredis.Redis.from_url(url, decode_responses=True, health_check_interval=30, socket_timeout=30,
                                 socket_connect_timeout=5, socket_keepalive=True,
                                 retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=8),
                                 retry_on_error=[aredis.ConnectionError, aredis.TimeoutError])


class AsyncReads:
    def __init__(self, client: aredis.Redis):
        self.r = client

    async def get_job(self, job_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        return job_record(await self.r.hgetall(job_key(job_id)), tenant)

    async def events(self, job_id: str, after: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        lo = f"({after}" if after else "-"
        return [event_row(eid, f) for eid, f in await self.r.xrange(events_key(job_id), lo, "+", count=limit)]
