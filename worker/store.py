"""The Redis job store: reading and writing job records, progress events, leases, cancel flags,
uploads' metadata and worker heartbeats. It knows how a record is laid out, not what a status means:
every status change goes through the lifecycle (worker/lifecycle.py), which calls `compare_and_set`.

The job record (a Redis hash, key names in worker/keys.py) is the truth about a job, not Celery's
result backend. Each field is written on its own (HSET), so the worker writing progress and the API
asking for a cancel never overwrite each other.

Job hash fields: id, tenant, status, created_at, started_at, finished_at, spec, progress, metrics,
error, report, queue, attempts, cancel, name, worker, waiting_for, notify (the webhook's url and secret:
only `notify_target` returns the secret; records carry the url alone), notifications (webhook attempts).
"""
from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from worker import keys

EVENTS_MAXLEN = 20000
JSON_FIELDS = ("spec", "progress", "metrics", "error", "report", "waiting_for", "notify", "notifications")
NOTIFICATIONS_KEPT = 20  # webhook attempts kept on a record (the latest)
# Run-time buckets (seconds) of the job duration histogram (/metrics): a digits job to a day-long one.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)

# KEYS[1] job hash, KEYS[2] the webhook outbox, KEYS[3] the per-status job counts; ARGV: new status,
# allowed current statuses (comma-separated), job id, "1" when the new status is terminal, now (unix s),
# then field/value pairs. Returns 1 when the status changed, 0 when the current status was not allowed
# (nothing written), -1 when there is no such job. A terminal move of a job with a webhook adds its outbox
# entry in the same script: the status and the promise to notify are written together or not at all.
_COMPARE_AND_SET = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return -1 end
local ok = false
for s in string.gmatch(ARGV[2], '[^,]+') do if s == cur then ok = true end end
if not ok then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local q = redis.call('HGET', KEYS[1], 'queue') or ''
redis.call('HINCRBY', KEYS[3], cur .. '|' .. q, -1)
redis.call('HINCRBY', KEYS[3], ARGV[1] .. '|' .. q, 1)
if ARGV[4] == '1' and redis.call('HEXISTS', KEYS[1], 'notify') == 1 then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
end
return 1
"""
# Takes an outbox entry that is due (KEYS[1] outbox; ARGV: job id, now, claimed until): its due time moves
# past the delivery's timeout, so that another worker's deliverer leaves it alone meanwhile, and takes it
# over should this one die mid-delivery. Returns 1 when claimed.
_CLAIM = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
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


def encode_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """Record fields as stored: the structured ones as JSON, the others as they are."""
    return {k: json.dumps(v) if k in JSON_FIELDS else v for k, v in fields.items()}


class JobStore:
    def __init__(self, client: redis.Redis):
        self.r = client
        self._compare_and_set = client.register_script(_COMPARE_AND_SET)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._claim = client.register_script(_CLAIM)

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> JobStore:
        return cls(redis.Redis.from_url(url, **{**client_options(Retry), **overrides}))

    # ---- job records -------------------------------------------------------------------------
    def get_job(self, job_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        return job_record(self.r.hgetall(keys.job(job_id)), tenant)

    def status(self, job_id: str) -> str | None:
        return self.r.hget(keys.job(job_id), "status")

    def list_jobs(self, tenant: str, status: str | None, limit: int, cursor: float | None
                  ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first. The cursor is the creation score of the last job of the previous page."""
        key = keys.tenant_jobs(tenant)
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
        self.r.hset(keys.job(job_id), mapping=encode_fields(fields))

    def compare_and_set(self, job_id: str, to: str, allowed: frozenset[str], terminal: bool = False,
                        **fields: Any) -> bool:
        """Atomically sets status `to` (and `fields`) if the current status is in `allowed`, keeps the
        per-status counts, and with `terminal` queues the job's webhook (when it has one) in the outbox.
        Only the lifecycle calls this: it owns the table of which status may follow which."""
        argv: list[Any] = [to, ",".join(sorted(allowed)), job_id, "1" if terminal else "0", time.time()]
        for k, v in encode_fields(fields).items():
            argv += [k, v]
        return self._compare_and_set(keys=[keys.job(job_id), keys.OUTBOX, keys.JOB_COUNTS], args=argv) == 1

    def set_cancel_flag(self, job_id: str) -> None:
        self.r.hset(keys.job(job_id), "cancel", 1)

    def cancel_requested(self, job_id: str) -> bool:
        return self.r.hget(keys.job(job_id), "cancel") == "1"

    def incr_attempts(self, job_id: str) -> int:
        return int(self.r.hincrby(keys.job(job_id), "attempts", 1))

    # ---- webhooks (worker/webhooks.py) ------------------------------------------------------------
    def notify_target(self, job_id: str) -> dict[str, Any] | None:
        """The job's webhook with its secret, for the deliverer only; None when it has none."""
        raw = self.r.hget(keys.job(job_id), "notify")
        return json.loads(raw) if raw else None

    def outbox_due(self, now: float, limit: int = 20) -> list[str]:
        return self.r.zrangebyscore(keys.OUTBOX, "-inf", now, start=0, num=limit)

    def claim_outbox(self, job_id: str, now: float, until: float) -> bool:
        return self._claim(keys=[keys.OUTBOX], args=[job_id, now, until]) == 1

    def outbox_retry_at(self, job_id: str, when: float) -> None:
        self.r.zadd(keys.OUTBOX, {job_id: when})

    def outbox_done(self, job_id: str) -> None:
        self.r.zrem(keys.OUTBOX, job_id)

    def add_notification(self, job_id: str, attempt: dict[str, Any]) -> None:
        """Appends a delivery attempt to the record (only the deliverer holding the outbox claim writes)."""
        raw = self.r.hget(keys.job(job_id), "notifications")
        kept = ([*json.loads(raw), attempt] if raw else [attempt])[-NOTIFICATIONS_KEPT:]
        self.r.hset(keys.job(job_id), "notifications", json.dumps(kept))

    # ---- operators' numbers (/metrics) -----------------------------------------------------------
    def count_submitted(self, pipe: Any, status: str, queue: str) -> None:
        """A new job's count, in the submitting transaction (status changes keep the counts after it)."""
        pipe.hincrby(keys.JOB_COUNTS, f"{status}|{queue}", 1)

    def job_counts(self) -> dict[tuple[str, str], int]:
        """(status, queue) -> jobs in that status now."""
        out = {}
        for k, v in self.r.hgetall(keys.JOB_COUNTS).items():
            status, _, queue = k.partition("|")
            out[(status, queue)] = int(v)
        return out

    def observe_duration(self, status: str, seconds: float) -> None:
        """An ended job's run time into the histogram (bucket counts are not cumulative here)."""
        bucket = next((str(b) for b in DURATION_BUCKETS if seconds <= b), "+Inf")
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hincrby(keys.DURATIONS, f"{status}|{bucket}", 1)
            pipe.hincrbyfloat(keys.DURATIONS, f"{status}|sum", seconds)
            pipe.execute()

    def durations(self) -> dict[str, dict[str, float]]:
        """status -> {bucket bound (or "sum") -> value}."""
        out: dict[str, dict[str, float]] = {}
        for k, v in self.r.hgetall(keys.DURATIONS).items():
            status, _, what = k.partition("|")
            out.setdefault(status, {})[what] = float(v)
        return out

    def outbox_size(self) -> int:
        return int(self.r.zcard(keys.OUTBOX))

    def worker_last_seen(self) -> dict[str, float]:
        """Worker name -> unix time of its last heartbeat."""
        return {name: float(ts) for name, ts in self.r.hgetall(keys.WORKERS_SEEN).items()}

    def broker_depth(self, queue: str) -> int:
        return int(self.r.llen(keys.broker_queue(queue)))

    # ---- events -----------------------------------------------------------------------------
    def add_event(self, job_id: str, kind: str, data: dict[str, Any]) -> str:
        return self.r.xadd(keys.events(job_id), {"type": kind, "data": json.dumps(data), "ts": now_iso()},
                           maxlen=EVENTS_MAXLEN, approximate=True)

    def events(self, job_id: str, after: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        lo = f"({after}" if after else "-"
        return [event_row(eid, f) for eid, f in self.r.xrange(keys.events(job_id), lo, "+", count=limit)]

    def wait_events(self, job_id: str, after: str, block_ms: int) -> list[dict[str, Any]]:
        res = self.r.xread({keys.events(job_id): after or "0-0"}, count=500, block=block_ms)
        return [event_row(eid, f) for _, rows in res for eid, f in rows]

    # ---- leases -----------------------------------------------------------------------------
    def acquire_lease(self, job_id: str, ttl_s: int) -> str | None:
        token = secrets.token_hex(8)
        return token if self.r.set(keys.lease(job_id), token, nx=True, px=int(ttl_s * 1000)) else None

    def renew_lease(self, job_id: str, token: str, ttl_s: int) -> bool:
        return self._renew(keys=[keys.lease(job_id)], args=[token, int(ttl_s * 1000)]) == 1

    def release_lease(self, job_id: str, token: str) -> None:
        self._release(keys=[keys.lease(job_id)], args=[token])

    def lease_holder(self, job_id: str) -> str | None:
        return self.r.get(keys.lease(job_id))

    # ---- artifacts --------------------------------------------------------------------------
    def put_artifact(self, meta: dict[str, Any]) -> None:
        self.r.hset(keys.artifact(meta["id"]), mapping={k: json.dumps(v) for k, v in meta.items()})

    def get_artifact(self, art_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        raw = self.r.hgetall(keys.artifact(art_id))
        if not raw:
            return None
        meta = {k: json.loads(v) for k, v in raw.items()}
        if tenant is not None and meta.get("tenant") != tenant:
            return None
        return meta

    # ---- workers ----------------------------------------------------------------------------
    def heartbeat(self, name: str, queues: list[str], ttl_s: float, **info: Any) -> None:
        with self.r.pipeline() as pipe:
            pipe.set(keys.worker(name), json.dumps({"queues": queues, "ts": now_iso(), **info}),
                     px=int(ttl_s * 1000))
            pipe.hset(keys.WORKERS_SEEN, name, time.time())
            pipe.execute()

    def remove_worker(self, name: str) -> None:
        """A worker that shuts down cleanly leaves: it is neither live nor stale."""
        self.r.delete(keys.worker(name))
        self.r.hdel(keys.WORKERS_SEEN, name)

    def stale_workers(self, forget_after_s: float = 600.0) -> dict[str, float]:
        """Workers that sent heartbeats but stopped (killed, frozen, or no longer consuming): name ->
        seconds since their last one. Those silent for longer than `forget_after_s` are forgotten."""
        out = {}
        now = time.time()
        for name, ts in self.r.hgetall(keys.WORKERS_SEEN).items():
            age = now - float(ts)
            if self.r.exists(keys.worker(name)):
                continue
            if age > forget_after_s:
                self.r.hdel(keys.WORKERS_SEEN, name)
            else:
                out[name] = round(age, 1)
        return out

    def live_workers(self) -> dict[str, dict[str, Any]]:
        out = {}
        for key in self.r.scan_iter(f"{keys.WORKER_PREFIX}*", count=100):
            val = self.r.get(key)
            if val:
                out[key.removeprefix(keys.WORKER_PREFIX)] = json.loads(val)
        return out


def client_options(retry_cls: type) -> dict[str, Any]:
    """Options of every Redis client of the service, sync or asyncio (each brings its own Retry class).
    socket_timeout must exceed the longest blocking XREAD (server-sent events block for 5 s). The retry
    rides over a Redis restart (a few seconds to reload its AOF): a command on a dropped connection
    reconnects and is sent again instead of failing the request or the job."""
    return {"decode_responses": True, "health_check_interval": 30, "socket_timeout": 30, "socket_connect_timeout": 5,
            "socket_keepalive": True, "retry": retry_cls(ExponentialBackoff(cap=2.0, base=0.1), retries=8),
            "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}


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
    if rec["notify"]:  # the secret never leaves through a record (the deliverer reads `notify_target`)
        rec["notify"] = {"url": rec["notify"].get("url")}
    rec["notifications"] = rec["notifications"] or []
    return rec


def event_row(eid: str, fields: dict[str, str]) -> dict[str, Any]:
    return {"id": eid, "type": fields.get("type"), "ts": fields.get("ts"), "data": json.loads(fields.get("data", "{}"))}
