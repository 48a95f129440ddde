"""Webhooks against a real redis-server and a real HTTP server on loopback: every terminal move writes the
outbox entry in the same step as the status, the secret stays out of records, the allow-list is honoured
before any connection, and the deliverer signs, retries and records."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.helpers import Receiver
from worker.config import WorkerSettings
from worker.lifecycle import Lifecycle, Status
from worker.webhooks import AllowList, Deliverer, backoff_s, sign

SECRET = "s3cret-s3cret-s3cret"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([500])
    yield r
    r.close()


def _deliverer(lc: Lifecycle, allow: str = "127.0.0.1") -> Deliverer:
    return Deliverer(lc.store, WorkerSettings(webhook_allow_hosts=allow, webhook_retry_base_s=0.01,
                                              webhook_max_attempts=3, webhook_timeout_s=5))


def _submit(lc: Lifecycle, url: str = "http://127.0.0.1:9/hook", **kw: Any) -> str:
    rec, _ = lc.submit("t", {"a": 1, "notify": {"url": url, "secret": SECRET}}, "cpu", **kw)
    return rec["id"]


def _outbox(r: redis.Redis) -> list[str]:
    return r.zrange("kd:outbox", 0, -1)


def test_every_terminal_move_writes_the_outbox_and_no_record_shows_the_secret(
        lifecycle: Lifecycle, redis_client: redis.Redis) -> None:
    plain, _ = lifecycle.submit("t", {"a": 1}, "cpu")
    ok, failed, cancelled = _submit(lifecycle), _submit(lifecycle), _submit(lifecycle)
    teacher = _submit(lifecycle)
    waiting = _submit(lifecycle, wait_for=[teacher])
    rec = lifecycle.store.get_job(ok)
    assert rec["spec"] == {"a": 1} and rec["notify"] == {"url": "http://127.0.0.1:9/hook"}
    assert SECRET not in json.dumps(rec) and lifecycle.store.notify_target(ok)["secret"] == SECRET
    assert lifecycle.start(ok) and lifecycle.start(failed) and lifecycle.start(teacher)
    assert _outbox(redis_client) == []  # no end yet, nothing to tell
    lifecycle.succeed(ok, {})
    lifecycle.fail(failed, "x", "it broke")
    lifecycle.cancel(cancelled)  # the API cancelling a queued job
    lifecycle.stopped(teacher)
    lifecycle.release_waiting()  # the sweep fails the job whose teacher was cancelled
    assert lifecycle.store.status(waiting) == Status.FAILED
    assert lifecycle.start(plain["id"]) and lifecycle.succeed(plain["id"], {})
    assert set(_outbox(redis_client)) == {ok, failed, cancelled, teacher, waiting}  # not `plain`: no notify
    counts = lifecycle.store.job_counts()
    assert counts[("succeeded", "cpu")] == 2 and counts[("failed", "cpu")] == 2 and counts[("queued", "cpu")] == 0


def test_signed_delivery_retried_after_a_500(lifecycle: Lifecycle, receiver: Receiver) -> None:
    job_id = _submit(lifecycle, receiver.url)
    lifecycle.start(job_id)
    lifecycle.succeed(job_id, {"student": {"top1": 0.9}})
    d = _deliverer(lifecycle)
    assert d.run_once() == 1
    first = lifecycle.store.get_job(job_id)["notifications"]
    assert [(a["outcome"], a["status_code"], a["attempt"]) for a in first] == [("retrying", 500, 1)]
    assert d.run_once() == 0  # not due before its backoff
    threading.Event().wait(0.05)
    assert d.run_once() == 1
    rec = lifecycle.store.get_job(job_id)
    assert [a["outcome"] for a in rec["notifications"]] == ["retrying", "delivered"]
    assert lifecycle.store.outbox_due(1e12) == []
    headers, body = receiver.got[-1]
    expected = hmac.new(SECRET.encode(), headers["X-Distillery-Timestamp"].encode() + b"." + body,
                        hashlib.sha256).hexdigest()
    assert headers["X-Distillery-Signature"] == f"sha256={expected}"
    assert headers["X-Distillery-Event"] == "job.succeeded"
    sent = json.loads(body)
    assert sent["id"] == job_id and sent["status"] == "succeeded" and sent["report"] == {"student": {"top1": 0.9}}
    assert SECRET not in body.decode()


def test_a_target_off_the_allow_list_is_refused_and_never_contacted(lifecycle: Lifecycle,
                                                                    receiver: Receiver) -> None:
    job_id = _submit(lifecycle, receiver.url)
    lifecycle.cancel(job_id)
    _deliverer(lifecycle, allow="10.0.0.0/8,hooks.example.com").run_once()
    (row,) = lifecycle.store.get_job(job_id)["notifications"]
    assert row["outcome"] == "refused" and "127.0.0.1" in row["error"] and receiver.got == []
    assert lifecycle.store.outbox_due(1e12) == []  # final: not tried again


def test_redirects_are_not_followed(lifecycle: Lifecycle) -> None:
    target = Receiver()
    bouncer = Receiver([302], location=target.url)
    try:
        job_id = _submit(lifecycle, bouncer.url)
        lifecycle.cancel(job_id)
        _deliverer(lifecycle).run_once()
        (row,) = lifecycle.store.get_job(job_id)["notifications"]
        assert row["outcome"] == "gave_up" and row["status_code"] == 302 and target.got == []
    finally:
        target.close()
        bouncer.close()


def test_allow_list_and_backoff() -> None:
    allow = AllowList.parse("hooks.example.com, .corp.example, 10.1.0.0/16, ::1")
    assert allow.refusal("https://hooks.example.com/x", resolve=False) is None
    assert allow.refusal("https://a.corp.example/x", resolve=False) is None
    assert allow.refusal("http://10.1.2.3:8080/x") is None and allow.refusal("http://[::1]/x") is None
    assert "not in" in allow.refusal("http://127.0.0.1/x")
    assert "not in" in allow.refusal("http://evil.example.com/x", resolve=False)
    assert "empty" in AllowList.parse("").refusal("http://10.1.2.3/x")
    assert [backoff_s(n, 2.0) for n in (1, 2, 3)] == [2.0, 4.0, 8.0] and backoff_s(30, 2.0) == 600.0
    assert sign("k", "1", b"{}") == "sha256=" + hmac.new(b"k", b"1.{}", hashlib.sha256).hexdigest()
