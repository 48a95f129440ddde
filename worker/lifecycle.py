"""The job lifecycle: the statuses a job can have, the one table of which status may follow which, and
the verbs that move a job. The API, the worker's runner and its sweeps call these verbs; nobody else
writes a status or names one as a string.

    queued --start--> running --succeed--> succeeded
      |                  |  \\--fail--> failed
      |                  \\--request_stop--> cancelling --stopped--> cancelled
      \\--cancel_queued--> cancelled,  --fail--> failed (teacher job failed, could not enqueue)

Every move is one atomic compare-and-set in Redis (worker/store.py), so a finished job never goes back
to running and a cancelled one never turns into succeeded, whoever writes at the same time.

Sending: a job is written `queued` and added to `unsent` in one transaction, then its id is sent to
its queue and it leaves `unsent`. A process that dies in between leaves it there; any worker's sweep
sends it (`send_unsent`), so an accepted job always runs. A job whose teacher jobs have not succeeded
is held in `waiting` instead; `release_waiting` sends it once they have (and fails it if one failed).
A second message for a job is harmless: the runner's lease and terminal check drop it.

Webhooks: a job submitted with `notify` keeps it in its own record field (never in the spec the API
shows). Every move into a terminal status, whoever makes it, writes the job's outbox entry in the same
atomic step (worker/store.py), and a worker's deliverer (worker/webhooks.py) sends it from there.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

import redis

from worker import keys
from worker.queues import Queue
from worker.store import EVENTS_MAXLEN, JobStore, encode_fields, new_id, now_iso

log = logging.getLogger("distillery.lifecycle")
Send = Callable[[str, str], None]  # (job id, queue): puts the job's message on the queue (worker/broker.py)
IDEMPOTENCY_TTL_S = 24 * 3600
# The API sends right after writing a job; one still unsent after this long lost its API process.
UNSENT_GRACE_S = 10.0
REAP_EVERY_S = 60  # an orphaned job is re-sent at most once a minute


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
OPEN = frozenset({Status.QUEUED, Status.RUNNING, Status.CANCELLING})  # counts against a tenant's job limit


class Move(NamedTuple):
    to: Status
    allowed_from: frozenset[Status]


# The transition table: verb -> the status it leads to and the statuses it may start from.
MOVES: dict[str, Move] = {
    # running -> running: a re-delivery after the job's worker died resumes it
    "start": Move(Status.RUNNING, frozenset({Status.QUEUED, Status.RUNNING})),
    "succeed": Move(Status.SUCCEEDED, frozenset({Status.RUNNING, Status.CANCELLING})),
    "fail": Move(Status.FAILED, OPEN),
    "cancel_queued": Move(Status.CANCELLED, frozenset({Status.QUEUED})),
    "request_stop": Move(Status.CANCELLING, frozenset({Status.RUNNING})),
    "stopped": Move(Status.CANCELLED, OPEN),  # the worker saw the cancel flag
}


class SendFailed(Exception):
    """The broker would not take the job's message; the job was failed with `enqueue_failed`."""


class AlreadyEnded(Exception):
    def __init__(self, job_id: str, status: str):
        super().__init__(f"job {job_id} already {status}")
        self.status = status


class Lifecycle:
    def __init__(self, store: JobStore, send: Send | None = None):
        self.store, self.r = store, store.r
        self._send = send

    def send(self, job_id: str, queue: str) -> None:
        if self._send is None:
            raise RuntimeError("this Lifecycle was made without a sender")
        self._send(job_id, queue)

    def _move(self, job_id: str, verb: str, **fields: Any) -> bool:
        move = MOVES[verb]
        changed = self.store.compare_and_set(job_id, move.to, move.allowed_from, terminal=move.to in TERMINAL,
                                              **fields)
        if not changed:
            return False
        if move.to == Status.RUNNING:
            self.r.sadd(keys.ACTIVE, job_id)
        elif move.to in TERMINAL:
            self.r.srem(keys.ACTIVE, job_id)
            self._observe_duration(job_id, move.to)
        extra = {"error": fields["error"]} if "error" in fields else {}
        self.store.add_event(job_id, "status", {"status": move.to.value, **extra})
        return True

    def _observe_duration(self, job_id: str, status: Status) -> None:
        """The ended job's run time (started to finished) into the /metrics histogram; a job that never
        started has none."""
        started, finished = self.r.hmget(keys.job(job_id), "started_at", "finished_at")
        if not started or not finished:
            return
        try:
            seconds = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
            self.store.observe_duration(status.value, max(0.0, seconds))
        except (ValueError, redis.RedisError) as e:  # a number for operators must never fail a job's move
            log.warning("job %s: duration not recorded: %s", job_id, e)

    # ---- the API's verbs --------------------------------------------------------------------------
    def is_replay(self, tenant: str, idempotency_key: str | None) -> bool:
        """Whether this Idempotency-Key was already used by the tenant (the submit answers the earlier job)."""
        return bool(idempotency_key) and bool(self.r.exists(keys.idempotency(tenant, idempotency_key or "")))

    def submit(self, tenant: str, spec: dict[str, Any], queue: str, name: str | None = None,
               idempotency_key: str | None = None, wait_for: Iterable[str] = ()) -> tuple[dict[str, Any], bool]:
        """Writes a queued job and sends it; returns (record, created). With an Idempotency-Key already
        used by this tenant, returns the earlier job and created=False. With `wait_for` (teacher job ids
        that have not succeeded yet) the job is held in `waiting` and sent once they have succeeded.
        Raises SendFailed (the job is then failed) when the broker is away."""
        wait_for = list(wait_for)
        notify = spec.get("notify")
        spec = {k: v for k, v in spec.items() if k != "notify"}  # kept apart: the spec is shown, the secret never
        job_id = new_id("job")
        if idempotency_key:
            key = keys.idempotency(tenant, idempotency_key)
            if not self.r.set(key, job_id, nx=True, ex=IDEMPOTENCY_TTL_S):
                earlier = self.r.get(key)
                rec = self.store.get_job(earlier) if earlier else None
                if rec is not None:
                    return rec, False
                self.r.set(key, job_id, ex=IDEMPOTENCY_TTL_S)
        created, ts = time.time(), now_iso()
        fields = {"id": job_id, "tenant": tenant, "status": Status.QUEUED.value, "created_at": ts, "queue": queue,
                  "attempts": 0, "cancel": 0, "name": name or "", "spec": spec, "progress": {}, "metrics": {}}
        if wait_for:
            fields["waiting_for"] = wait_for
        if notify:
            fields["notify"] = notify
        with self.r.pipeline() as pipe:
            pipe.hset(keys.job(job_id), mapping=encode_fields(fields))
            self.store.count_submitted(pipe, Status.QUEUED.value, queue)
            pipe.zadd(keys.tenant_jobs(tenant), {job_id: created})
            pipe.xadd(keys.events(job_id), {"type": "status", "ts": ts,
                                            "data": json.dumps({"status": Status.QUEUED.value})}, maxlen=EVENTS_MAXLEN)
            if wait_for:
                pipe.sadd(keys.WAITING, job_id)
                pipe.xadd(keys.events(job_id), {"type": "log", "ts": ts, "data": json.dumps(
                    {"message": f"waiting for teacher job(s) {', '.join(wait_for)} to succeed"})}, maxlen=EVENTS_MAXLEN)
            else:  # until it is confirmed sent, a worker's sweep would send it should this process die
                pipe.zadd(keys.UNSENT, {job_id: created})
            pipe.execute()
        try:
            if wait_for:  # the teachers may have ended between the caller's check and the write
                self.release_waiting()
            else:
                self.send(job_id, queue)
                self.r.zrem(keys.UNSENT, job_id)
        except Exception as e:  # the broker is away: say so rather than leave a job queued forever
            self.fail(job_id, "enqueue_failed", f"could not enqueue: {e}")
            raise SendFailed(str(e)) from e
        return self.store.get_job(job_id) or {}, True

    def cancel(self, job_id: str) -> str:
        """Sets the cancel flag; a queued job is cancelled at once, a running one moves to cancelling
        (its worker stops within a second or two). Returns the status now; AlreadyEnded if it had ended."""
        status = self.store.status(job_id)
        if status in TERMINAL:
            raise AlreadyEnded(job_id, status or "")
        self.store.set_cancel_flag(job_id)
        if self._move(job_id, "cancel_queued", finished_at=now_iso()):
            return Status.CANCELLED.value
        self._move(job_id, "request_stop")
        return self.store.status(job_id) or "unknown"

    # ---- the worker's verbs -------------------------------------------------------------------------
    def start(self, job_id: str, **fields: Any) -> bool:
        return self._move(job_id, "start", **fields)

    def succeed(self, job_id: str, report: dict[str, Any]) -> bool:
        return self._move(job_id, "succeed", finished_at=now_iso(), report=report)

    def fail(self, job_id: str, code: str, message: str) -> bool:
        self.store.add_event(job_id, "log", {"level": "error", "message": message})
        return self._move(job_id, "fail", finished_at=now_iso(), error={"code": code, "message": message})

    def stopped(self, job_id: str) -> bool:
        """The job's worker saw its cancel flag and stopped it."""
        return self._move(job_id, "stopped", finished_at=now_iso())

    # ---- sweeps (every worker, every heartbeat period; the runner after each job) -------------------
    def release_waiting(self) -> list[str]:
        """Sends the held-back jobs whose teacher jobs have all succeeded; fails (`teacher_failed`) those
        whose teacher job failed or was cancelled, and on the next call the jobs that wait on them. The
        message goes out before the job leaves `waiting`: a crash in between sends it again, never loses it."""
        sent = []
        for job_id in self.r.smembers(keys.WAITING):
            rec = self.store.get_job(job_id)
            if rec is None or rec["status"] != Status.QUEUED:
                self.r.srem(keys.WAITING, job_id)
                continue
            statuses = {d: self.store.status(d) for d in rec.get("waiting_for") or []}
            bad = {d: st for d, st in statuses.items() if st in (Status.FAILED, Status.CANCELLED) or st is None}
            if bad:
                d, st = next(iter(bad.items()))
                self.fail(job_id, "teacher_failed", f"teacher job {d} {st or 'is gone'}; this job needs its "
                          "student as a teacher and cannot run")
                self.r.srem(keys.WAITING, job_id)
            elif all(st == Status.SUCCEEDED for st in statuses.values()):
                queue = rec.get("queue") or Queue.CPU
                self.send(job_id, queue)
                self.r.hdel(keys.job(job_id), "waiting_for")
                self.r.srem(keys.WAITING, job_id)
                self.store.add_event(job_id, "log", {"message": "teacher job(s) succeeded; the job is enqueued"})
                log.info("job %s: its teacher jobs succeeded; enqueued on %s", job_id, queue)
                sent.append(job_id)
        return sent

    def requeue_orphans(self) -> list[str]:
        """Sends a fresh message for each started job whose lease lapsed (its worker process died, and
        the broker would keep the unacked message until the visibility timeout). The new delivery takes
        the lease and resumes from the job's last epoch checkpoint."""
        sent = []
        for job_id in self.r.smembers(keys.ACTIVE):
            status, queue = self.r.hmget(keys.job(job_id), "status", "queue")
            if status is None or status in TERMINAL:
                self.r.srem(keys.ACTIVE, job_id)
            elif status in (Status.RUNNING, Status.CANCELLING) and not self.r.exists(keys.lease(job_id)) \
                    and self.r.set(keys.reaped(job_id), 1, nx=True, ex=REAP_EVERY_S):
                log.warning("job %s lost its worker; re-enqueueing it on %s to resume", job_id, queue)
                self.store.add_event(job_id, "log", {"message": "worker lost; the job is queued again and will "
                                                     "resume from its last epoch checkpoint"})
                self.send(job_id, queue or Queue.CPU)
                sent.append(job_id)
        return sent

    def send_unsent(self, grace_s: float = UNSENT_GRACE_S) -> list[str]:
        """Sends each queued job written more than `grace_s` ago whose message was never confirmed sent
        (the API died in between), so that every job the API answered 202 for runs."""
        sent = []
        for job_id in self.r.zrangebyscore(keys.UNSENT, "-inf", time.time() - grace_s):
            status, queue = self.r.hmget(keys.job(job_id), "status", "queue")
            if status == Status.QUEUED:
                log.warning("job %s was accepted but never enqueued (the API stopped); enqueueing it on %s",
                            job_id, queue)
                self.send(job_id, queue or Queue.CPU)
                sent.append(job_id)
            self.r.zrem(keys.UNSENT, job_id)
        return sent

    def sweep(self, unsent_grace_s: float = UNSENT_GRACE_S) -> None:
        """What every worker does every heartbeat period."""
        self.requeue_orphans()
        self.send_unsent(unsent_grace_s)
        self.release_waiting()
