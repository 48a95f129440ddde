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

from worker import keys
from worker.store import client_options, event_row, job_record


def async_client(url: str) -> aredis.Redis:
    return aredis.Redis.from_url(url, **client_options(Retry))


class AsyncReads:
    def __init__(self, client: aredis.Redis):
        self.r = client

    async def get_job(self, job_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        return job_record(await self.r.hgetall(keys.job(job_id)), tenant)

    async def events(self, job_id: str, after: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        lo = f"({after}" if after else "-"
        return [event_row(eid, f) for eid, f in await self.r.xrange(keys.events(job_id), lo, "+", count=limit)]
