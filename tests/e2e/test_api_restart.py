"""The API process killed (SIGKILL) and started again while clients submit: every job it answered 202
for exists afterwards and reaches a final state, and a job whose record was written but whose message
never left (the API died in between) is sent by a worker's sweep."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.stack import Stack, running_stack, wait_for
from tests.e2e.test_jobs import spec
from worker.store import JobStore

TINY = spec(student={"architecture": "mlp", "kwargs": {"hidden": [16]}}, training={"epochs": 1, "batch_size": 256})


@pytest.fixture
def stack(tmp_path: Path, dataset_root: Path):
    with running_stack(tmp_path, dataset_root) as s:
        yield s


def _restart_api(s: Stack) -> None:
    os.killpg(s.api.pid, signal.SIGKILL)  # no shutdown, no cleanup: requests in flight die with it
    s.api.wait()
    s.api = s._spawn("api", [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app",
                             "--host", "127.0.0.1", "--port", str(s.port)])


def test_no_accepted_job_is_lost_when_the_api_is_killed_under_load(stack: Stack) -> None:
    accepted: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def submitter(n: int) -> None:
        with httpx.Client(base_url=stack.base, timeout=10) as http:
            for _ in range(n):
                if stop.is_set():
                    return
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
    _restart_api(stack)
    for t in threads:
        t.join(120)
    stack.wait_ready()
    with httpx.Client(base_url=stack.base, timeout=30) as http:  # and a few more on the new process
        for _ in range(3):
            r = http.post("/v1/jobs", json=TINY)
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])
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
    # record exactly as the API writes it (JobStore.create_job), and no message.
    store = JobStore.from_url(stack.redis.url)
    rec, created = store.create_job("default", TINY, "cpu", "stranded")
    assert created and stack.r.zscore("kd:unsent", rec["id"]) is not None
    job = stack.wait_final(rec["id"], timeout=120)
    assert job["status"] == "succeeded" and job["attempts"] == 1, job
    assert stack.r.zscore("kd:unsent", rec["id"]) is None
    assert "never enqueued" in stack.log("w1")
