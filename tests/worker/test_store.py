"""The Redis job store against a real redis-server: records, transitions, events, leases, listing."""
from __future__ import annotations

import time

import redis

from worker.store import JobStore


def test_create_get_and_idempotency(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    rec, created = store.create_job("t1", {"a": 1}, "cpu", "first", idempotency_key="k1")
    assert created and rec["status"] == "queued" and rec["spec"] == {"a": 1} and rec["tenant"] == "t1"
    again, created2 = store.create_job("t1", {"a": 2}, "cpu", idempotency_key="k1")
    assert not created2 and again["id"] == rec["id"]
    other, created3 = store.create_job("t2", {"a": 2}, "cpu", idempotency_key="k1")  # keys are per tenant
    assert created3 and other["id"] != rec["id"]
    assert store.get_job(rec["id"], "t2") is None  # another tenant's job is invisible
    assert store.get_job("job_missing") is None


def test_transitions_are_guarded(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    rec, _ = store.create_job("t", {}, "cpu")
    jid = rec["id"]
    assert store.transition(jid, "running", ["queued"])
    assert not store.transition(jid, "running", ["queued"])
    assert store.transition(jid, "succeeded", ["running"], report={"x": 1})
    assert not store.transition(jid, "running", ["queued", "running"])  # never back from an end state
    assert store.get_job(jid)["report"] == {"x": 1}
    kinds = [e["data"].get("status") for e in store.events(jid) if e["type"] == "status"]
    assert kinds == ["queued", "running", "succeeded"]


def test_cancel_queued_and_running(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    q, _ = store.create_job("t", {}, "cpu")
    assert store.request_cancel(q["id"]) == "cancelled"
    r, _ = store.create_job("t", {}, "cpu")
    store.transition(r["id"], "running", ["queued"])
    assert store.request_cancel(r["id"]) == "cancelling"
    assert store.cancel_requested(r["id"])


def test_events_cursor_and_blocking_read(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    rec, _ = store.create_job("t", {}, "cpu")
    first = store.events(rec["id"])
    ids = [store.add_event(rec["id"], "progress", {"step": i}) for i in range(3)]
    after = store.events(rec["id"], after=ids[0])
    assert [e["data"]["step"] for e in after] == [1, 2]
    assert store.wait_events(rec["id"], ids[-1], block_ms=50) == []
    assert len(first) == 1 and first[0]["type"] == "status"


def test_lease_is_exclusive_and_expires(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    token = store.acquire_lease("job_x", ttl_s=1)
    assert token and store.acquire_lease("job_x", ttl_s=1) is None
    assert store.renew_lease("job_x", token, 1) and not store.renew_lease("job_x", "other", 1)
    store.release_lease("job_x", "other")  # not ours: stays
    assert store.lease_holder("job_x") == token
    time.sleep(1.2)
    assert store.acquire_lease("job_x", ttl_s=1) is not None  # lapsed: a new delivery may take it


def test_list_pages_newest_first(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    ids = []
    for _ in range(5):
        ids.append(store.create_job("t", {}, "cpu")[0]["id"])
        time.sleep(0.002)
    store.transition(ids[1], "running", ["queued"])
    page1, cur = store.list_jobs("t", None, 2, None)
    page2, cur2 = store.list_jobs("t", None, 2, float(cur))
    page3, cur3 = store.list_jobs("t", None, 2, float(cur2))
    assert [r["id"] for r in page1 + page2 + page3] == ids[::-1] and cur3 is None
    running, _ = store.list_jobs("t", "running", 10, None)
    assert [r["id"] for r in running] == [ids[1]]


def test_orphaned_jobs_are_started_jobs_without_a_lease(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    alive, _ = store.create_job("t", {}, "cpu")
    dead, _ = store.create_job("t", {}, "gpu")
    queued, _ = store.create_job("t", {}, "cpu")
    for rec in (alive, dead):
        store.transition(rec["id"], "running", ["queued"])
    store.acquire_lease(alive["id"], 30)
    assert store.orphaned_jobs() == [(dead["id"], "gpu")]
    assert store.orphaned_jobs() == []  # re-enqueued at most once a minute
    store.transition(dead["id"], "failed", ["running"])
    assert dead["id"] not in redis_client.smembers("kd:active") and queued["id"] not in redis_client.smembers(
        "kd:active")


def test_unsent_jobs_are_those_written_but_never_confirmed_sent(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    sent, _ = store.create_job("t", {}, "cpu")
    lost, _ = store.create_job("t", {}, "gpu")
    ended, _ = store.create_job("t", {}, "cpu")
    held, _ = store.create_job("t", {}, "cpu", wait_for=[sent["id"]])  # sent by enqueue_ready instead
    store.mark_sent(sent["id"])
    store.request_cancel(ended["id"])
    assert store.unsent_jobs(grace_s=60) == []  # the API may still be about to send them
    assert store.unsent_jobs(grace_s=0) == [(lost["id"], "gpu")]
    assert redis_client.zrange("kd:unsent", 0, -1) == [lost["id"]]  # ended ones are dropped on the way
    assert held["id"] not in redis_client.zrange("kd:unsent", 0, -1)
