"""Per-tenant limits, counted inside Redis so that concurrent requests (threads, API processes,
several API hosts) can never both take the last slot.

Open jobs (`KD_MAX_ACTIVE_JOBS_PER_TENANT`): `kd:tenant:{t}:open` is a sorted set of the tenant's job
ids that were admitted under a limit, scored by admission time. One Lua script counts the members whose
record is still queued, running or cancelling, drops the others (ended jobs leave on their own, no hook
in the worker is needed), and adds a reservation if the count is under the limit. A reservation is a
token that stands for a job being written; it becomes the job id once the record exists, or it is
removed when the submission fails. A token left by an API process that died in between stops
counting after RESERVATION_TTL_S.

Upload bytes (`KD_MAX_TENANT_UPLOAD_BYTES`): `kd:tenant:{t}:upload_bytes` holds the bytes of the
tenant's stored uploads. An upload in flight reserves its bytes chunk by chunk in
`kd:tenant:{t}:upload_inflight` (token -> bytes, touched times in `…:upload_touched`), so two uploads
streaming at once cannot overshoot the quota together; on success the reservation turns into stored
bytes in one step, on any failure it is dropped. Reservations of uploads that stopped sending for
RESERVATION_TTL_S (their API process died) are dropped by the next check.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from api.errors import Problem
from worker import keys
from worker.lifecycle import OPEN
from worker.store import new_id

RESERVATION_TTL_S = 900
# Retry-After for 429: a tenant's slot frees when one of its jobs ends; a short job takes about this long.
RETRY_AFTER_S = 30
_OPEN_STATUSES = ",".join(sorted(OPEN))  # the lifecycle's open statuses, handed to the script

# KEYS[1] open set; ARGV: limit, count to reserve, now, reservation ttl, job key prefix, open statuses
# (comma-separated), tokens... Returns -1 when admitted (the tokens were added), else the number of open jobs.
_ADMIT = """
local limit, want, now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local is_open = {}
for s in string.gmatch(ARGV[6], '[^,]+') do is_open[s] = true end
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local open = 0
for i = 1, #members, 2 do
  local id, ts = members[i], tonumber(members[i + 1])
  local st = redis.call('HGET', ARGV[5] .. id, 'status')
  if st and is_open[st] then open = open + 1
  elseif (not st) and ts > now - ttl then open = open + 1
  else redis.call('ZREM', KEYS[1], id) end
end
if open + want > limit then return open end
for i = 7, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[i]) end
return -1
"""

# KEYS[1] open set; ARGV: token, job id, now. The reservation becomes the job.
_BIND = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2]) end
return 1
"""

# KEYS: stored bytes, in-flight hash, touched zset; ARGV: token, bytes, limit, now, ttl.
# Returns {1, used} when reserved, {0, used} (used without this chunk) when it would pass the limit.
_RESERVE_BYTES = """
local n, limit, now, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
for _, t in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - ttl)) do
  redis.call('HDEL', KEYS[2], t)
  redis.call('ZREM', KEYS[3], t)
end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do used = used + tonumber(v) end
if used + n > limit then return {0, used} end
redis.call('HINCRBY', KEYS[2], ARGV[1], n)
redis.call('ZADD', KEYS[3], now, ARGV[1])
return {1, used + n}
"""

# KEYS: stored bytes, in-flight hash, touched zset; ARGV: token, final size. Reservation -> stored bytes.
_COMMIT_BYTES = """
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return redis.call('INCRBY', KEYS[1], ARGV[2])
"""


class Quotas:
    def __init__(self, client: redis.Redis, max_active_jobs: int | None, max_upload_bytes: int | None):
        self.r = client
        self.max_active_jobs = max_active_jobs
        self.max_upload_bytes = max_upload_bytes
        self._admit = client.register_script(_ADMIT)
        self._bind = client.register_script(_BIND)
        self._reserve = client.register_script(_RESERVE_BYTES)
        self._commit = client.register_script(_COMMIT_BYTES)

    # ---- open jobs ------------------------------------------------------------------------------
    @contextmanager
    def job_slots(self, tenant: str, count: int = 1) -> Iterator[JobSlots]:
        """Reserves `count` open-job slots for the duration of a submission, or raises 429. Call
        `slots.bind(job_id)` for each job written; unbound reservations are given back on exit."""
        slots = JobSlots(self, tenant)
        if self.max_active_jobs is not None and count > 0:
            slots.tokens = [new_id("rsv") for _ in range(count)]
            open_now = self._admit(keys=[keys.tenant(tenant, "open")], args=[
                self.max_active_jobs, count, time.time(), RESERVATION_TTL_S, keys.JOB_PREFIX, _OPEN_STATUSES,
                *slots.tokens])
            if open_now != -1:
                raise Problem(429, f"tenant {tenant!r} has {open_now} queued or running job(s); the limit is "
                              f"{self.max_active_jobs} (KD_MAX_ACTIVE_JOBS_PER_TENANT). Submit again when one "
                              "has ended, or cancel one.", headers={"Retry-After": str(RETRY_AFTER_S)})
        try:
            yield slots
        finally:
            if slots.tokens:
                self.r.zrem(keys.tenant(tenant, "open"), *slots.tokens)

    def open_jobs(self, tenant: str) -> int:
        ids = self.r.zrange(keys.tenant(tenant, "open"), 0, -1)
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.job(job_id), "status")
            statuses = pipe.execute()
        return sum(1 for st in statuses if st in OPEN)

    # ---- upload bytes ---------------------------------------------------------------------------
    def _byte_keys(self, tenant: str) -> list[str]:
        return [keys.tenant(tenant, what) for what in ("upload_bytes", "upload_inflight", "upload_touched")]

    def reserve_bytes(self, tenant: str, token: str, n: int) -> None:
        """Counts `n` more bytes of an upload in flight against the tenant's quota, or raises 413."""
        if self.max_upload_bytes is None or n <= 0:
            return
        ok, used = self._reserve(keys=self._byte_keys(tenant),
                                 args=[token, n, self.max_upload_bytes, time.time(), RESERVATION_TTL_S])
        if not ok:
            raise Problem(413, f"tenant {tenant!r} stores {used} bytes of uploads; this upload would pass the "
                          f"quota of {self.max_upload_bytes} bytes (KD_MAX_TENANT_UPLOAD_BYTES)")

    def commit_bytes(self, tenant: str, token: str, size: int) -> None:
        self._commit(keys=self._byte_keys(tenant), args=[token, size])

    def release_bytes(self, tenant: str, token: str) -> None:
        keys = self._byte_keys(tenant)
        with self.r.pipeline() as pipe:
            pipe.hdel(keys[1], token)
            pipe.zrem(keys[2], token)
            pipe.execute()

    def upload_bytes(self, tenant: str) -> int:
        return int(self.r.get(keys.tenant(tenant, "upload_bytes")) or 0)


class JobSlots:
    def __init__(self, quotas: Quotas, tenant: str):
        self.quotas, self.tenant = quotas, tenant
        self.tokens: list[str] = []

    def bind(self, job_id: str) -> None:
        """The job now exists: it holds the slot (until it ends) instead of the reservation."""
        if not self.tokens:
            return
        token = self.tokens.pop(0)
        self.quotas._bind(keys=[keys.tenant(self.tenant, "open")], args=[token, job_id, time.time()])
