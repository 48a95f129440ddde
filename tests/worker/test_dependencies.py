"""Held-back jobs (teacher-assistant chain links) against a real redis-server: enqueued once their
teacher jobs have succeeded, failed when one failed, and released exactly once."""
from __future__ import annotations

import redis

from worker.dependencies import enqueue_ready
from worker.store import JobStore


def _finish(store: JobStore, job_id: str, status: str) -> None:
    assert store.transition(job_id, "running", ["queued"])
    assert store.transition(job_id, status, ["running"], finished_at="t")


def test_a_waiting_job_is_enqueued_once_its_teachers_succeed(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    a, _ = store.create_job("t", {}, "cpu")
    b, _ = store.create_job("t", {}, "cpu")
    c, _ = store.create_job("t", {}, "gpu", wait_for=[a["id"], b["id"]])
    assert c["status"] == "queued" and c["waiting_for"] == [a["id"], b["id"]]
    sent: list[tuple[str, str]] = []

    def send(job_id: str, queue: str) -> None:
        sent.append((job_id, queue))

    assert enqueue_ready(store, send) == [] and sent == []
    _finish(store, a["id"], "succeeded")
    assert enqueue_ready(store, send) == []  # b still runs
    _finish(store, b["id"], "succeeded")
    assert enqueue_ready(store, send) == [c["id"]] and sent == [(c["id"], "gpu")]
    assert enqueue_ready(store, send) == [] and len(sent) == 1  # released: never sent twice
    rec = store.get_job(c["id"])
    assert rec is not None and rec["status"] == "queued" and not rec.get("waiting_for")


def test_a_failed_teacher_fails_the_chain_after_it(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    a, _ = store.create_job("t", {}, "cpu")
    b, _ = store.create_job("t", {}, "cpu", wait_for=[a["id"]])
    c, _ = store.create_job("t", {}, "cpu", wait_for=[b["id"]])
    _finish(store, a["id"], "failed")
    sent: list[str] = []
    enqueue_ready(store, lambda job_id, q: sent.append(job_id))
    enqueue_ready(store, lambda job_id, q: sent.append(job_id))  # c learns of b's failure on the next sweep
    assert sent == []
    for job, teacher in ((b, a), (c, b)):
        rec = store.get_job(job["id"])
        assert rec is not None and rec["status"] == "failed" and rec["error"]["code"] == "teacher_failed"
        assert teacher["id"] in rec["error"]["message"]


def test_a_cancelled_waiting_job_is_dropped(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    a, _ = store.create_job("t", {}, "cpu")
    b, _ = store.create_job("t", {}, "cpu", wait_for=[a["id"]])
    assert store.request_cancel(b["id"]) == "cancelled"
    _finish(store, a["id"], "succeeded")
    sent: list[str] = []
    assert enqueue_ready(store, lambda job_id, q: sent.append(job_id)) == [] and sent == []
