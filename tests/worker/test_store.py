"""The Redis job store against a real redis-server: records, events, leases, listing, compare-and-set."""
from __future__ import annotations

import time

import redis

from worker.lifecycle import Lifecycle
from worker.store import JobStore


def test_records_are_per_tenant(lifecycle: Lifecycle) -> None:
    rec, _ = lifecycle.submit("t1", {"a": 1}, "cpu", "first")
    store = lifecycle.store
    assert store.get_job(rec["id"], "t1")["spec"] == {"a": 1}
    assert store.get_job(rec["id"], "t2") is None  # another tenant's job is invisible
    assert store.get_job("job_missing") is None


def test_compare_and_set_writes_only_from_an_allowed_status(lifecycle: Lifecycle) -> None:
    rec, _ = lifecycle.submit("t", {}, "cpu")
    store = lifecycle.store
    assert not store.compare_and_set(rec["id"], "running", frozenset({"running"}), worker="w")
    assert store.get_job(rec["id"])["status"] == "queued" and "worker" not in store.get_job(rec["id"])
    assert store.compare_and_set(rec["id"], "running", frozenset({"queued"}), worker="w", report={"x": 1})
    got = store.get_job(rec["id"])
    assert got["status"] == "running" and got["worker"] == "w" and got["report"] == {"x": 1}
    assert not store.compare_and_set("job_missing", "running", frozenset({"queued"}))


def test_events_cursor_and_blocking_read(lifecycle: Lifecycle) -> None:
    rec, _ = lifecycle.submit("t", {}, "cpu")
    store = lifecycle.store
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


def test_list_pages_newest_first(lifecycle: Lifecycle) -> None:
    ids = []
    for _ in range(5):
        ids.append(lifecycle.submit("t", {}, "cpu")[0]["id"])
        time.sleep(0.002)
    lifecycle.start(ids[1])
    store = lifecycle.store
    page1, cur = store.list_jobs("t", None, 2, None)
    page2, cur2 = store.list_jobs("t", None, 2, float(cur))
    page3, cur3 = store.list_jobs("t", None, 2, float(cur2))
    assert [r["id"] for r in page1 + page2 + page3] == ids[::-1] and cur3 is None
    running, _ = store.list_jobs("t", "running", 10, None)
    assert [r["id"] for r in running] == [ids[1]]


def test_workers_live_and_stale(redis_client: redis.Redis) -> None:
    store = JobStore(redis_client)
    store.heartbeat("w1@h", ["cpu"], ttl_s=0.2, pid=1)
    store.heartbeat("w2@h", ["gpu"], ttl_s=30, pid=2)
    assert set(store.live_workers()) == {"w1@h", "w2@h"}
    time.sleep(0.3)
    assert set(store.live_workers()) == {"w2@h"} and set(store.stale_workers()) == {"w1@h"}
    store.remove_worker("w1@h")
    assert store.stale_workers() == {}
