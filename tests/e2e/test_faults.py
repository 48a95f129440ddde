"""Faults provoked for real against a real stack (tests/harness.py): redis-server with AOF, Celery worker
processes, the API under uvicorn, over HTTP. Each test causes the fault (kill -9 of a pool process or of a
whole worker, SIGSTOP, a duplicate message, a Redis restart, the API killed under concurrent submits, a
record written whose message never left) and checks what a client sees afterwards.

The stack runs with a 5 s lease, a 0.5 s heartbeat and KD_MAX_ATTEMPTS=2 (harness.FAULT_ENV), so recovery
that takes a lease period in production (60 s by default) shows here within seconds. One stack serves the
module; each test first sets the workers it needs (`ensure_workers`).
"""
from __future__ import annotations

import base64
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.settings import Settings
from tests.harness import FAULT_ENV, Stack, pool_children, running_stack, wait_for
from tests.helpers import spec
from worker.broker import Sender, make_celery
from worker.lifecycle import Lifecycle
from worker.store import JobStore

LONG = {"epochs": 8, "batch_size": 32, "lr": 0.01, "seed": 1}
TINY = spec(student={"architecture": "mlp", "kwargs": {"hidden": [16]}}, training={"epochs": 1, "batch_size": 256})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, dataset_root: Path) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("faults"), dataset_root, workers=("w1",), env=FAULT_ENV) as s:
        yield s


def _one_worker(stack: Stack) -> str:
    """One worker, keeping one that runs (a worker started afresh costs seconds); its name."""
    running = [n for n, p in stack.workers.items() if p.poll() is None]
    name = running[0] if running else "w1"
    stack.ensure_workers(name)
    return name


def _submit(stack: Stack, **training: Any) -> str:
    r = httpx.post(f"{stack.base}/v1/jobs", json=spec(training={**LONG, **training}), timeout=30)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _statuses(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"]["status"] for e in events if e["type"] == "status"]


def _logs(events: list[dict[str, Any]]) -> list[str]:
    return [e["data"].get("message", "") for e in events if e["type"] == "log"]


def _assert_ran_once_per_attempt(stack: Stack, job: dict[str, Any], epochs: int) -> None:
    """The job succeeded with every epoch exactly once, and started once per attempt (never twice at once)."""
    assert job["status"] == "succeeded", job["error"]
    report = stack.report(job["id"])
    assert [r["epoch"] for r in report["epochs"]] == list(range(1, epochs + 1))
    events = stack.events(job["id"])
    assert _statuses(events).count("running") == job["attempts"]
    assert len([e for e in events if e["type"] == "phase"]) == job["attempts"]


def _worker_of(stack: Stack, job_id: str) -> tuple[str, int]:
    """(worker name, pool pid) of the process running the job's current attempt."""
    pid = int(stack.record(job_id)["worker"].rsplit(":", 1)[1])
    for name, proc in stack.workers.items():
        if pid in pool_children(proc.pid):
            return name, pid
    raise AssertionError(f"no worker of this stack runs pid {pid}")


def test_readyz_turns_503_naming_a_worker_that_stopped_consuming(stack: Stack) -> None:
    stack.ensure_workers("w1")
    ready = httpx.get(f"{stack.base}/readyz", timeout=10)
    assert ready.status_code == 200 and stack.hostname("w1") in ready.json()["workers"]
    main = stack.workers["w1"].pid
    os.kill(main, signal.SIGSTOP)  # the process lives (a PID check passes) but consumes nothing
    try:
        assert os.path.exists(f"/proc/{main}")
        r = wait_for("/readyz 503", lambda: (r := httpx.get(f"{stack.base}/readyz", timeout=10)).status_code == 503
                     and r, timeout=30)
        detail = r.json()["detail"]
        assert stack.hostname("w1") in detail and "stale" in detail and "last heartbeat" in detail, detail
    finally:
        os.kill(main, signal.SIGCONT)
    back = wait_for("/readyz 200", lambda: (r := httpx.get(f"{stack.base}/readyz", timeout=10)).status_code == 200
                    and r, timeout=30)
    assert stack.hostname("w1") in back.json()["workers"] and not back.json()["stale_workers"]


def test_a_second_delivery_while_the_lease_lives_does_nothing(stack: Stack) -> None:
    stack.ensure_workers("w1", "w2")
    # long enough never to end on its own during the test, however fast the machine: it is cancelled below
    jid = _submit(stack, epochs=1000)
    stack.wait_epoch(jid, 1)
    # the same job id delivered twice more while it runs: the idle worker takes them
    send = Sender(make_celery(Settings(redis_url=stack.redis.url)))
    for _ in range(2):
        send(jid, "cpu")
    wait_for("a duplicate delivery to be refused", lambda: sum(
        f"job {jid}: lease held by another delivery" in stack.log(w) for w in ("w1", "w2")), timeout=60)
    assert httpx.post(f"{stack.base}/v1/jobs/{jid}/cancel", timeout=30).status_code == 202
    job = stack.wait_final(jid)
    assert job["status"] == "cancelled" and job["attempts"] == 1
    events = stack.events(jid)
    assert _statuses(events).count("running") == 1
    assert len([e for e in events if e["type"] == "phase"]) == 1
    epochs = [e["data"]["epoch"] for e in events if e["type"] == "epoch"]
    assert epochs == list(range(1, len(epochs) + 1))  # every epoch once: nothing ran beside it


def test_whole_worker_killed_mid_epoch_resumes_on_the_other_worker(stack: Stack) -> None:
    stack.ensure_workers("w1", "w2")
    jid = _submit(stack)
    stack.wait_epoch(jid, 2)
    victim, _ = _worker_of(stack, jid)
    survivor = "w2" if victim == "w1" else "w1"
    stack.kill_worker(victim)  # main process and pool, SIGKILL, no cleanup
    job = stack.wait_final(jid, timeout=180)
    _assert_ran_once_per_attempt(stack, job, LONG["epochs"])
    assert job["attempts"] == 2
    logs = _logs(stack.events(jid))
    assert any("worker lost; the job is queued again" in m for m in logs), logs
    assert any("resumed distill from its epoch" in m for m in logs), logs
    assert stack.workers[survivor].poll() is None


def test_a_job_whose_worker_keeps_dying_fails_with_worker_lost(stack: Stack) -> None:
    _one_worker(stack)
    jid = _submit(stack)
    killed: list[int] = []
    for attempt in (1, 2):  # KD_MAX_ATTEMPTS=2: kill the pool process each time it starts the job
        def started(attempt: int = attempt) -> int | None:
            rec = stack.record(jid)
            pid = int(rec.get("worker", "x:0").rsplit(":", 1)[1])
            ok = rec.get("status") == "running" and int(rec.get("attempts", 0)) == attempt and pid not in killed
            return pid if ok else None
        pid = wait_for(f"attempt {attempt}", started, timeout=120)
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    job = stack.wait_final(jid, timeout=120)
    assert job["status"] == "failed" and job["error"]["code"] == "worker_lost", job["error"]
    assert "died 2 times" in job["error"]["message"] and "2 attempts" in job["error"]["message"]
    assert _statuses(stack.events(jid)).count("running") == 2


def _queued_job_ids(stack: Stack, queue: str) -> set[str]:
    """Job ids of the Celery messages waiting in a queue, or taken by a worker but not yet acknowledged
    (kombu's Redis transport keeps those in the `unacked` hash as [message, exchange, routing key])."""
    messages = [json.loads(m) for m in stack.r.lrange(queue, 0, -1)]
    messages += [json.loads(v)[0] for v in stack.r.hvals("unacked")]
    return {job_id for m in messages for job_id in json.loads(base64.b64decode(m["body"]))[0]}


def test_redis_restart_keeps_every_job_and_everyone_reconnects(stack: Stack) -> None:
    _one_worker(stack)  # one worker: one job runs, the next waits in the queue
    running = _submit(stack, epochs=10)  # long enough to be mid-run when Redis goes away
    stack.wait_epoch(running, 2)
    queued = _submit(stack, epochs=2)
    wait_for("the second job in the queue", lambda: queued in _queued_job_ids(stack, "cpu"))
    before = {j: (stack.record(j), [e["id"] for e in stack.events(j)]) for j in (running, queued)}
    assert before[queued][0]["status"] == "queued"

    stack.restart_redis()

    # records, events and the queued message came back from the AOF
    for j, (rec, event_ids) in before.items():
        after = stack.record(j)
        assert after["spec"] == rec["spec"] and after["created_at"] == rec["created_at"]
        assert set(event_ids) <= {e["id"] for e in stack.events(j)}
    assert queued in _queued_job_ids(stack, "cpu") or stack.record(queued)["status"] != "queued"
    # the API answers at once; the worker's consumer reconnects (its heartbeat needs a consumed ping)
    assert httpx.get(f"{stack.base}/v1/jobs/{running}", timeout=30).status_code == 200
    stack.wait_ready(timeout=60)
    for j, epochs in ((running, 10), (queued, 2)):
        _assert_ran_once_per_attempt(stack, stack.wait_final(j, timeout=180), epochs)


def test_a_killed_pool_process_resumes_its_job_from_the_checkpoint(stack: Stack) -> None:
    name = _one_worker(stack)
    jid = _submit(stack)
    stack.wait_epoch(jid, 2)
    children = pool_children(stack.workers[name].pid)
    assert children, "no prefork pool process to kill"
    for pid in children:
        os.kill(pid, signal.SIGKILL)  # the process running the job dies without any cleanup
    job = stack.wait_final(jid)
    _assert_ran_once_per_attempt(stack, job, LONG["epochs"])
    assert job["attempts"] == 2
    assert any("resumed distill from its epoch" in m for m in _logs(stack.events(jid)))
    assert stack.workers[name].poll() is None  # the worker itself lived on, with a new pool process


def test_no_accepted_job_is_lost_when_the_api_is_killed_under_load(stack: Stack) -> None:
    """The API killed (SIGKILL) and started again while clients submit: every job it answered 202 for exists
    afterwards and reaches a final state."""
    _one_worker(stack)
    accepted: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()

    def submitter(n: int) -> None:
        with httpx.Client(base_url=stack.base, timeout=10) as http:
            for _ in range(n):
                try:
                    r = http.post("/v1/jobs", json=TINY)
                except httpx.HTTPError as e:  # the API is down or died mid-request: not accepted
                    with lock:
                        refused.append(type(e).__name__)
                    time.sleep(0.2)
                    continue
                with lock:
                    (accepted.append(r.json()["id"]) if r.status_code == 202 else refused.append(str(r.status_code)))

    threads = [threading.Thread(target=submitter, args=(4,)) for _ in range(6)]
    for t in threads:
        t.start()
    wait_for("some jobs accepted", lambda: len(accepted) >= 4, timeout=60, every=0.01)
    stack.restart_api()  # no shutdown, no cleanup: requests in flight die with it
    for t in threads:
        t.join(120)
    stack.wait_ready()
    for _ in range(3):  # and a few more on the new process
        accepted.append(stack.submit(TINY))
    assert refused, "the kill did not hit the burst"  # the test provoked what it means to
    assert len(set(accepted)) == len(accepted)
    for job_id in accepted:
        job = stack.wait_final(job_id, timeout=300)
        assert job["status"] == "succeeded", job
    # nothing left behind that no one will send: records the killed API wrote without answering 202 are
    # sent by the workers' sweep once their grace period has passed (the accepted jobs may end sooner)
    wait_for("the sweep to send what the killed API left", lambda: [
        j for j in stack.r.zrange("kd:unsent", 0, -1) if stack.r.hget(f"kd:job:{j}", "status") == "queued"] == [],
        timeout=120)


def test_a_job_written_but_never_enqueued_is_sent_by_the_sweep(stack: Stack) -> None:
    # The state an API leaves when it dies between writing the record and sending the message: the
    # record exactly as the API writes it (Lifecycle.submit), and no message.
    name = _one_worker(stack)
    seen = len(stack.log(name))

    def process_dies(job_id: str, queue: str) -> None:
        raise SystemExit(1)

    with pytest.raises(SystemExit):
        Lifecycle(JobStore.from_url(stack.redis_url), process_dies).submit("default", TINY, "cpu", "stranded")
    (job_id,) = [j for j in stack.r.zrange("kd:unsent", 0, -1) if stack.r.hget(f"kd:job:{j}", "name") == "stranded"]
    rec = {"id": job_id}
    job = stack.wait_final(rec["id"], timeout=120)
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert stack.r.zscore("kd:unsent", rec["id"]) is None
    assert f"job {rec['id']} was accepted but never enqueued" in stack.log(name)[seen:]
