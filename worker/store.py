"""The Redis job store: job records, progress events, leases, cancel flags, artifacts' metadata.

The job record (a Redis hash) is the truth about a job, not Celery's result backend. Each field is
written on its own (HSET), so the worker writing progress and the API asking for a cancel never
overwrite each other; status changes go through one Lua script that checks the current status, so
a finished job never goes back to running and a cancelled one never turns into succeeded.

Keys (prefix `kd:`):
  job:{id}            hash: id, tenant, status, created_at, started_at, finished_at, spec, progress,
                      metrics, error, report, queue, attempts, cancel, name
  job:{id}:events     stream of events {type, data (JSON), ts}
  jobs:{tenant}       sorted set of job ids by creation time (listing, newest first)
  lease:{id}          the worker token holding the job (SET NX with expiry, renewed while it runs)
  idem:{tenant}:{key} job id submitted under an Idempotency-Key
  artifact:{id}       hash: id, tenant, filename, sha256, size, format, meta, path, created_at
  worker:{name}       heartbeat of a live worker (JSON with its queues), expiring; refreshed only when the
                      worker's consumer has taken a ping off the broker (worker/heartbeat.py)
  workers:seen        hash: worker name -> unix time of its last heartbeat (to name workers gone stale)
  active              ids of jobs that started and have not ended (to find those whose worker died)
  waiting             ids of queued jobs held back until their teacher jobs succeed (not yet enqueued)
  unsent              sorted set: ids of jobs written `queued` whose message the API has not yet confirmed
                      sent, by write time. An API that died in between leaves them here; a worker's sweep
                      sends them (`unsent_jobs`), so an accepted job is never stranded without a message
"""
from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

P = "kd:"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
STATES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
EVENTS_MAXLEN = 20000
JSON_FIELDS = ("spec", "progress", "metrics", "error", "report", "waiting_for")

# KEYS[1] job hash; ARGV: new status, allowed current statuses (comma-separated), then field/value pairs.
# Returns 1 when the status changed, 0 when the current status was not allowed (nothing written).
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return -1 end
local ok = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == cur then ok = true end end
if not ok then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# Release a lease only if we still hold it (a lapsed lease may belong to another worker now).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Renewing also re-takes a lease that vanished while nobody else took it (Redis restarted after the
# key's expiry time passed, or the worker was paused past it): the job is still ours as long as no
# other delivery holds the lease, and stopping a healthy run there would waste its epoch.
_RENEW = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class JobStore:
    def __init__(self, client: redis.Redis):
        self.r = client
        self._transition = client.register_script(_TRANSITION)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    @classmethod
    def from_url(cls, url: str) -> JobStore:
        return cls(redis.Redis.from_url(url, **client_options(Retry)))

    # ---- job records -------------------------------------------------------------------------
    def create_job(self, tenant: str, spec: dict[str, Any], queue: str, name: str | None = None,
                   idempotency_key: str | None = None, wait_for: Iterable[str] = ()) -> tuple[dict[str, Any], bool]:
        """Writes a queued record; returns (record, created). With an Idempotency-Key already used by
        this tenant, returns the earlier job and created=False. With `wait_for` (teacher job ids that
        have not succeeded yet) the job is held in `waiting` and enqueued once they have succeeded."""
        wait_for = list(wait_for)
        job_id = new_id("job")
        if idempotency_key:
            key = f"{P}idem:{tenant}:{idempotency_key}"
            if not self.r.set(key, job_id, nx=True, ex=24 * 3600):
                earlier = self.r.get(key)
                rec = self.get_job(earlier) if earlier else None
                if rec is not None:
                    return rec, False
                self.r.set(key, job_id, ex=24 * 3600)
        created = time.time()
        fields = {"id": job_id, "tenant": tenant, "status": "queued", "created_at": now_iso(),
                  "queue": queue, "attempts": 0, "cancel": 0, "name": name or "",
                  "spec": json.dumps(spec), "progress": json.dumps({}), "metrics": json.dumps({})}
        with self.r.pipeline() as pipe:
            pipe.hset(job_key(job_id), mapping=fields)
            pipe.zadd(f"{P}jobs:{tenant}", {job_id: created})
            pipe.xadd(events_key(job_id), {"type": "status", "data": json.dumps({"status": "queued"}),
                                                 "ts": fields["created_at"]}, maxlen=EVENTS_MAXLEN)
            if not wait_for:  # held-back jobs are sent by enqueue_ready instead
                pipe.zadd(f"{P}unsent", {job_id: created})
            if wait_for:
                pipe.hset(job_key(job_id), "waiting_for", json.dumps(wait_for))
                pipe.sadd(f"{P}waiting", job_id)
                pipe.xadd(events_key(job_id), {"type": "log", "ts": fields["created_at"], "data": json.dumps(
                    {"message": f"waiting for teacher job(s) {', '.join(wait_for)} to succeed"})},
                    maxlen=EVENTS_MAXLEN)
            pipe.execute()
        return self.get_job(job_id), True  # type: ignore[return-value]

    def get_job(self, job_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        return job_record(self.r.hgetall(job_key(job_id)), tenant)

    def list_jobs(self, tenant: str, status: str | None, limit: int, cursor: float | None
                  ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first. The cursor is the creation score of the last job of the previous page."""
        key = f"{P}jobs:{tenant}"
        out: list[dict[str, Any]] = []
        hi: str = f"({cursor}" if cursor is not None else "+inf"
        while len(out) < limit:
            ids = self.r.zrevrangebyscore(key, hi, "-inf", start=0, num=max(limit * 2, 50), withscores=True)
            if not ids:
                return out, None
            for job_id, score in ids:
                hi = f"({score!r}"
                rec = self.get_job(job_id)
                if rec is None or (status and rec["status"] != status):
                    continue
                out.append(rec)
                if len(out) == limit:
                    more = self.r.zcount(key, "-inf", hi) > 0
                    return out, (repr(score) if more else None)
        return out, None

    def set_fields(self, job_id: str, **fields: Any) -> None:
        self.r.hset(job_key(job_id), mapping={k: json.dumps(v) if k in JSON_FIELDS else v
                                                  for k, v in fields.items()})

    def transition(self, job_id: str, to: str, allowed: Iterable[str], **fields: Any) -> bool:
        """Atomically move to `to` if the current status is in `allowed`; emits a status event."""
        argv: list[Any] = [to, ",".join(allowed)]
        for k, v in fields.items():
            argv += [k, json.dumps(v) if k in JSON_FIELDS else v]
        changed = self._transition(keys=[job_key(job_id)], args=argv) == 1
        if changed and to == "running":
            self.r.sadd(f"{P}active", job_id)
        elif changed and to in TERMINAL:
            self.r.srem(f"{P}active", job_id)
        if changed:
            extra = {"error": fields["error"]} if "error" in fields else {}
            self.add_event(job_id, "status", {"status": to, **extra})
        return changed

    def request_cancel(self, job_id: str) -> str:
        """Sets the cancel flag; a queued job is cancelled at once, a running one moves to cancelling."""
        self.r.hset(job_key(job_id), "cancel", 1)
        if self.transition(job_id, "cancelled", ["queued"], finished_at=now_iso()):
            return "cancelled"
        self.transition(job_id, "cancelling", ["running"])
        return self.r.hget(job_key(job_id), "status") or "unknown"

    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(job_key(job_id), "cancel") == "1"

    def incr_attempts(self, job_id: str) -> int:
        return int(self.r.hincrby(job_key(job_id), "attempts", 1))

    # ---- events -----------------------------------------------------------------------------
    def add_event(self, job_id: str, kind: str, data: dict[str, Any]) -> str:
        return self.r.xadd(events_key(job_id), {"type": kind, "data": json.dumps(data), "ts": now_iso()},
                           maxlen=EVENTS_MAXLEN, approximate=True)

    def events(self, job_id: str, after: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        lo = f"({after}" if after else "-"
        return [event_row(eid, f) for eid, f in self.r.xrange(events_key(job_id), lo, "+", count=limit)]

    def wait_events(self, job_id: str, after: str, block_ms: int) -> list[dict[str, Any]]:
        res = self.r.xread({events_key(job_id): after or "0-0"}, count=500, block=block_ms)
        return [event_row(eid, f) for _, rows in res for eid, f in rows]

    # ---- leases -----------------------------------------------------------------------------
    def acquire_lease(self, job_id: str, ttl_s: int) -> str | None:
        token = secrets.token_hex(8)
        return token if self.r.set(f"{P}lease:{job_id}", token, nx=True, px=int(ttl_s * 1000)) else None

    def renew_lease(self, job_id: str, token: str, ttl_s: int) -> bool:
        return self._renew(keys=[f"{P}lease:{job_id}"], args=[token, int(ttl_s * 1000)]) == 1

    def release_lease(self, job_id: str, token: str) -> None:
        self._release(keys=[f"{P}lease:{job_id}"], args=[token])

    def lease_holder(self, job_id: str) -> str | None:
        return self.r.get(f"{P}lease:{job_id}")

    def orphaned_jobs(self) -> list[tuple[str, str]]:
        """(id, queue) of started jobs whose lease has lapsed: their worker died mid-run."""
        out = []
        for job_id in self.r.smembers(f"{P}active"):
            status, queue = self.r.hmget(job_key(job_id), "status", "queue")
            if status in TERMINAL or status is None:
                self.r.srem(f"{P}active", job_id)
            elif status in ("running", "cancelling") and not self.r.exists(f"{P}lease:{job_id}") \
                    and self.r.set(f"{P}reaped:{job_id}", 1, nx=True, ex=60):  # one re-enqueue a minute at most
                out.append((job_id, queue or "cpu"))
        return out

    def ready_waiting(self) -> list[tuple[str, str]]:
        """(id, queue) of held-back jobs whose teacher jobs have all succeeded, to be enqueued now.

        A held-back job whose teacher job failed or was cancelled fails here (`teacher_failed`), and
        so, on the next call, do the jobs that wait on it. The caller enqueues each ready job and then
        calls `release_waiting`; should it die in between, the next sweep sends the job again, and a
        second message for a job is harmless (lease, terminal check)."""
        out = []
        for job_id in self.r.smembers(f"{P}waiting"):
            rec = self.get_job(job_id)
            if rec is None or rec["status"] != "queued":
                self.r.srem(f"{P}waiting", job_id)
                continue
            deps = rec.get("waiting_for") or []
            statuses = {d: self.r.hget(job_key(d), "status") for d in deps}
            bad = {d: st for d, st in statuses.items() if st in ("failed", "cancelled") or st is None}
            if bad:
                d, st = next(iter(bad.items()))
                self.transition(job_id, "failed", ["queued"], finished_at=now_iso(), error={
                    "code": "teacher_failed", "message": f"teacher job {d} {st or 'is gone'}; this job needs its "
                    "student as a teacher and cannot run"})
                self.r.srem(f"{P}waiting", job_id)
            elif all(st == "succeeded" for st in statuses.values()):
                out.append((job_id, rec.get("queue") or "cpu"))
        return out

    def mark_sent(self, job_id: str) -> None:
        """The job's message is on the queue (see `unsent` above)."""
        self.r.zrem(f"{P}unsent", job_id)

    def unsent_jobs(self, grace_s: float) -> list[tuple[str, str]]:
        """(id, queue) of queued jobs written more than `grace_s` ago whose message was never confirmed
        sent: the API died between writing the record and enqueueing it. The caller sends each and
        calls `mark_sent`; a second message for a job is harmless (lease, terminal check)."""
        out = []
        for job_id in self.r.zrangebyscore(f"{P}unsent", "-inf", time.time() - grace_s):
            status, queue = self.r.hmget(job_key(job_id), "status", "queue")
            if status == "queued":
                out.append((job_id, queue or "cpu"))
            else:
                self.r.zrem(f"{P}unsent", job_id)
        return out

    def release_waiting(self, job_id: str) -> None:
        self.r.hdel(job_key(job_id), "waiting_for")
        self.r.srem(f"{P}waiting", job_id)
        self.add_event(job_id, "log", {"message": "teacher job(s) succeeded; the job is enqueued"})

    # ---- artifacts --------------------------------------------------------------------------
    def put_artifact(self, meta: dict[str, Any]) -> None:
        self.r.hset(f"{P}artifact:{meta['id']}", mapping={k: json.dumps(v) for k, v in meta.items()})

    def get_artifact(self, art_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        raw = self.r.hgetall(f"{P}artifact:{art_id}")
        if not raw:
            return None
        meta = {k: json.loads(v) for k, v in raw.items()}
        if tenant is not None and meta.get("tenant") != tenant:
            return None
        return meta

    # ---- workers ----------------------------------------------------------------------------
    def heartbeat(self, name: str, queues: list[str], ttl_s: float, **info: Any) -> None:
        with self.r.pipeline() as pipe:
            pipe.set(f"{P}worker:{name}", json.dumps({"queues": queues, "ts": now_iso(), **info}),
                     px=int(ttl_s * 1000))
            pipe.hset(f"{P}workers:seen", name, time.time())
            pipe.execute()

    def remove_worker(self, name: str) -> None:
        """A worker that shuts down cleanly leaves: it is neither live nor stale."""
        self.r.delete(f"{P}worker:{name}")
        self.r.hdel(f"{P}workers:seen", name)

    def stale_workers(self, forget_after_s: float = 600.0) -> dict[str, float]:
        """Workers that sent heartbeats but stopped (killed, frozen, or no longer consuming): name ->
        seconds since their last one. Those silent for longer than `forget_after_s` are forgotten."""
        out = {}
        now = time.time()
        for name, ts in self.r.hgetall(f"{P}workers:seen").items():
            age = now - float(ts)
            if self.r.exists(f"{P}worker:{name}"):
                continue
            if age > forget_after_s:
                self.r.hdel(f"{P}workers:seen", name)
            else:
                out[name] = round(age, 1)
        return out

    def live_workers(self) -> dict[str, dict[str, Any]]:
        out = {}
        for key in self.r.scan_iter(f"{P}worker:*", count=100):
            val = self.r.get(key)
            if val:
                out[key.removeprefix(f"{P}worker:")] = json.loads(val)
        return out


def client_options(retry_cls: type) -> dict[str, Any]:
    """Options of every Redis client of the service, sync or asyncio (each brings its own Retry class).
    socket_timeout must exceed the longest blocking XREAD (server-sent events block for 5 s). The retry
    rides over a Redis restart (a few seconds to reload its AOF): a command on a dropped connection
    reconnects and is sent again instead of failing the request or the job."""
    return {"decode_responses": True, "health_check_interval": 30, "socket_timeout": 30, "socket_connect_timeout": 5,
            "socket_keepalive": True, "retry": retry_cls(ExponentialBackoff(cap=2.0, base=0.1), retries=8),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}


def job_key(job_id: str) -> str:
    return f"{P}job:{job_id}"


def events_key(job_id: str) -> str:
    return f"{P}job:{job_id}:events"


def job_record(raw: dict[str, str], tenant: str | None = None) -> dict[str, Any] | None:
    """A job hash as read from Redis (HGETALL) -> the record; None when it is missing or, with `tenant`,
    belongs to another tenant. Shared by the store and the API's async reads (api/reads.py)."""
    if not raw or (tenant is not None and raw.get("tenant") != tenant):
        return None
    rec: dict[str, Any] = dict(raw)
    for f in JSON_FIELDS:
        rec[f] = json.loads(raw[f]) if raw.get(f) else None
    rec["attempts"] = int(raw.get("attempts", 0))
    rec["cancel"] = raw.get("cancel") == "1"
    return rec


def event_row(eid: str, fields: dict[str, str]) -> dict[str, Any]:
    return {"id": eid, "type": fields.get("type"), "ts": fields.get("ts"), "data": json.loads(fields.get("data", "{}"))}
