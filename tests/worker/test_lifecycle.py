"""The job lifecycle against a real redis-server: the transition table, the API's and the worker's verbs,
and the sweeps that send held-back, unsent and orphaned jobs."""
from __future__ import annotations

import pytest
import redis

from worker.lifecycle import MOVES, OPEN, TERMINAL, AlreadyEnded, Lifecycle, SendFailed, Status
from worker.store import JobStore


def _statuses(lc: Lifecycle, job_id: str) -> list[str]:
    return [e["data"]["status"] for e in lc.store.events(job_id) if e["type"] == "status"]


def _finish(lc: Lifecycle, job_id: str, status: Status) -> None:
    assert lc.start(job_id)
    if status == Status.SUCCEEDED:
        assert lc.succeed(job_id, {})
    else:
        assert lc.fail(job_id, "x", "it broke")


def test_the_table_never_leaves_an_end_state() -> None:
    assert set(Status) == OPEN | TERMINAL and not OPEN & TERMINAL
    for verb, move in MOVES.items():
        assert not move.allowed_from & TERMINAL, verb


def test_submit_writes_a_queued_job_and_sends_it(lifecycle: Lifecycle, sent, redis_client: redis.Redis) -> None:
    rec, created = lifecycle.submit("t1", {"a": 1}, "gpu", "first")
    assert created and rec["status"] == Status.QUEUED and rec["spec"] == {"a": 1} and rec["tenant"] == "t1"
    assert rec["name"] == "first" and rec["queue"] == "gpu" and rec["attempts"] == 0
    assert sent.sent == [(rec["id"], "gpu")]
    assert redis_client.zrange("kd:unsent", 0, -1) == []  # confirmed sent
    assert _statuses(lifecycle, rec["id"]) == ["queued"]


def test_idempotency_key_answers_the_first_job(lifecycle: Lifecycle, sent) -> None:
    rec, _ = lifecycle.submit("t1", {"a": 1}, "cpu", idempotency_key="k1")
    assert lifecycle.is_replay("t1", "k1") and not lifecycle.is_replay("t2", "k1")
    again, created = lifecycle.submit("t1", {"a": 2}, "cpu", idempotency_key="k1")
    assert not created and again["id"] == rec["id"] and len(sent.sent) == 1
    other, created3 = lifecycle.submit("t2", {"a": 2}, "cpu", idempotency_key="k1")  # keys are per tenant
    assert created3 and other["id"] != rec["id"]


def test_a_broker_that_refuses_fails_the_job(redis_client: redis.Redis) -> None:
    def refuse(job_id: str, queue: str) -> None:
        raise ConnectionError("broker away")

    lc = Lifecycle(JobStore(redis_client), refuse)
    with pytest.raises(SendFailed, match="broker away"):
        lc.submit("t", {}, "cpu")
    (job_id,) = redis_client.zrange("kd:jobs:t", 0, -1)
    rec = lc.store.get_job(job_id)
    assert rec["status"] == Status.FAILED and rec["error"]["code"] == "enqueue_failed"


def test_moves_are_guarded_and_emit_status_events(lifecycle: Lifecycle, redis_client: redis.Redis) -> None:
    rec, _ = lifecycle.submit("t", {}, "cpu")
    jid = rec["id"]
    assert not lifecycle.succeed(jid, {"x": 1})  # not from queued
    assert lifecycle.start(jid, started_at="now") and jid in redis_client.smembers("kd:active")
    assert lifecycle.start(jid)  # a re-delivery after a lost worker resumes
    assert lifecycle.succeed(jid, {"x": 1}) and jid not in redis_client.smembers("kd:active")
    assert not lifecycle.start(jid) and not lifecycle.fail(jid, "x", "y") and not lifecycle.stopped(jid)
    got = lifecycle.store.get_job(jid)
    assert got["status"] == Status.SUCCEEDED and got["report"] == {"x": 1} and got["finished_at"]
    assert _statuses(lifecycle, jid) == ["queued", "running", "running", "succeeded"]


def test_fail_records_the_error(lifecycle: Lifecycle) -> None:
    rec, _ = lifecycle.submit("t", {}, "cpu")
    assert lifecycle.start(rec["id"]) and lifecycle.fail(rec["id"], "diverged", "lower the lr")
    got = lifecycle.store.get_job(rec["id"])
    assert got["error"] == {"code": "diverged", "message": "lower the lr"}
    status_events = [e["data"] for e in lifecycle.store.events(rec["id"]) if e["type"] == "status"]
    assert status_events[-1] == {"status": "failed", "error": got["error"]}


def test_cancel_queued_running_and_ended(lifecycle: Lifecycle) -> None:
    q, _ = lifecycle.submit("t", {}, "cpu")
    assert lifecycle.cancel(q["id"]) == Status.CANCELLED
    r, _ = lifecycle.submit("t", {}, "cpu")
    lifecycle.start(r["id"])
    assert lifecycle.cancel(r["id"]) == Status.CANCELLING and lifecycle.store.cancel_requested(r["id"])
    assert lifecycle.stopped(r["id"]) and lifecycle.store.status(r["id"]) == Status.CANCELLED
    with pytest.raises(AlreadyEnded, match="already cancelled"):
        lifecycle.cancel(r["id"])


def test_orphans_are_started_jobs_without_a_lease(lifecycle: Lifecycle, sent, redis_client: redis.Redis) -> None:
    alive, _ = lifecycle.submit("t", {}, "cpu")
    dead, _ = lifecycle.submit("t", {}, "gpu")
    queued, _ = lifecycle.submit("t", {}, "cpu")
    for rec in (alive, dead):
        lifecycle.start(rec["id"])
    lifecycle.store.acquire_lease(alive["id"], 30)
    sent.sent.clear()
    assert lifecycle.requeue_orphans() == [dead["id"]] and sent.sent == [(dead["id"], "gpu")]
    assert lifecycle.requeue_orphans() == []  # re-sent at most once a minute
    assert any("worker lost" in e["data"].get("message", "") for e in lifecycle.store.events(dead["id"]))
    lifecycle.fail(dead["id"], "x", "y")
    assert dead["id"] not in redis_client.smembers("kd:active")
    assert queued["id"] not in redis_client.smembers("kd:active")


def test_unsent_jobs_are_those_written_but_never_confirmed_sent(redis_client: redis.Redis, sent) -> None:
    def die(job_id: str, queue: str) -> None:  # the API process stops between the write and the send
        raise KeyboardInterrupt

    dying = Lifecycle(JobStore(redis_client), die)
    with pytest.raises(KeyboardInterrupt):
        dying.submit("t", {}, "gpu")
    (lost,) = redis_client.zrange("kd:unsent", 0, -1)
    lc = Lifecycle(JobStore(redis_client), sent)
    ok, _ = lc.submit("t", {}, "cpu")
    with pytest.raises(KeyboardInterrupt):
        dying.submit("t", {}, "cpu")
    ended = next(j for j in redis_client.zrange("kd:unsent", 0, -1) if j != lost)
    lc.cancel(ended)
    sent.sent.clear()
    assert lc.send_unsent(grace_s=60) == [] and sent.sent == []  # the API may still be about to send them
    assert lc.send_unsent(grace_s=0) == [lost] and sent.sent == [(lost, "gpu")]
    assert redis_client.zrange("kd:unsent", 0, -1) == []  # sent ones and ended ones leave
    assert ok["id"] != lost


def test_a_waiting_job_is_sent_once_its_teachers_succeed(lifecycle: Lifecycle, sent, redis_client) -> None:
    a, _ = lifecycle.submit("t", {}, "cpu")
    b, _ = lifecycle.submit("t", {}, "cpu")
    c, _ = lifecycle.submit("t", {}, "gpu", wait_for=[a["id"], b["id"]])
    assert c["status"] == Status.QUEUED and c["waiting_for"] == [a["id"], b["id"]]
    assert c["id"] not in redis_client.zrange("kd:unsent", 0, -1)  # held jobs are sent by release_waiting
    sent.sent.clear()
    assert lifecycle.release_waiting() == [] and sent.sent == []
    _finish(lifecycle, a["id"], Status.SUCCEEDED)
    assert lifecycle.release_waiting() == []  # b still runs
    _finish(lifecycle, b["id"], Status.SUCCEEDED)
    assert lifecycle.release_waiting() == [c["id"]] and sent.sent == [(c["id"], "gpu")]
    assert lifecycle.release_waiting() == [] and len(sent.sent) == 1  # released: never sent twice
    rec = lifecycle.store.get_job(c["id"])
    assert rec["status"] == Status.QUEUED and not rec.get("waiting_for")


def test_a_failed_teacher_fails_the_chain_after_it(lifecycle: Lifecycle, sent) -> None:
    a, _ = lifecycle.submit("t", {}, "cpu")
    b, _ = lifecycle.submit("t", {}, "cpu", wait_for=[a["id"]])
    c, _ = lifecycle.submit("t", {}, "cpu", wait_for=[b["id"]])
    _finish(lifecycle, a["id"], Status.FAILED)
    sent.sent.clear()
    lifecycle.release_waiting()
    lifecycle.release_waiting()  # c learns of b's failure on the next sweep
    assert sent.sent == []
    for job, teacher in ((b, a), (c, b)):
        rec = lifecycle.store.get_job(job["id"])
        assert rec["status"] == Status.FAILED and rec["error"]["code"] == "teacher_failed"
        assert teacher["id"] in rec["error"]["message"]


def test_a_cancelled_waiting_job_is_dropped(lifecycle: Lifecycle, sent) -> None:
    a, _ = lifecycle.submit("t", {}, "cpu")
    b, _ = lifecycle.submit("t", {}, "cpu", wait_for=[a["id"]])
    assert lifecycle.cancel(b["id"]) == Status.CANCELLED
    _finish(lifecycle, a["id"], Status.SUCCEEDED)
    sent.sent.clear()
    assert lifecycle.release_waiting() == [] and sent.sent == []
