"""`distillery up` restarts a worker that was killed: the real command in a subprocess, with its
embedded Redis on a free port and a temporary data dir. kill -9 of the worker (main process and
pool) mid-job; the supervisor starts a new worker, whose sweep finds the job's lease lapsed and
re-enqueues it; it resumes from its last epoch checkpoint and succeeds with every epoch."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from distillery.redis_server import free_port
from tests.e2e.stack import FAULT_ENV, ROOT, pool_children, stop_group, wait_for
from tests.e2e.test_jobs import spec


def _worker_pid(supervisor: int) -> int | None:
    for pid in pool_children(supervisor):
        try:
            if b"celery" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def test_worker_killed_under_distillery_up_is_restarted_and_the_job_resumes(tmp_path: Path,
                                                                           dataset_root: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, **FAULT_ENV, "KD_DATASET_ROOT": str(dataset_root), "PYTHONUNBUFFERED": "1"}
    for k in ("KD_REDIS_URL", "KD_API_KEYS", "KD_API_KEYS_FILE", "KD_DATA_DIR"):
        env.pop(k, None)
    log = open(tmp_path / "up.log", "w")
    up = subprocess.Popen([sys.executable, "-m", "distillery", "up", "--host", "127.0.0.1", "--port", str(port),
                           "--data-dir", str(tmp_path / "data"), "--queues", "cpu"], cwd=ROOT, env=env,
                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for("distillery up ready", lambda: up.poll() is None and
                 httpx.get(base + "/readyz", timeout=5).status_code == 200, timeout=180)
        epochs = 12
        r = httpx.post(base + "/v1/jobs", json=spec(training={"epochs": epochs, "batch_size": 32, "lr": 0.01,
                                                               "seed": 1}), timeout=30)
        assert r.status_code == 202, r.text
        jid = r.json()["id"]
        wait_for("epoch 2", lambda: (httpx.get(f"{base}/v1/jobs/{jid}", timeout=10).json().get("metrics") or {})
                 .get("epoch", 0) >= 2, timeout=120)
        first = _worker_pid(up.pid)
        assert first and pool_children(first), "no worker with a pool process under distillery up"
        os.killpg(first, signal.SIGKILL)  # the worker's whole process group: main process and pool

        job = wait_for("the job to end", lambda: (j := httpx.get(f"{base}/v1/jobs/{jid}", timeout=10).json())[
            "status"] in ("succeeded", "failed", "cancelled") and j, timeout=180)
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 2
        second = _worker_pid(up.pid)
        assert second and second != first  # the supervisor started a new worker
        report = httpx.get(f"{base}/v1/jobs/{jid}/report", timeout=10).json()
        assert [e["epoch"] for e in report["epochs"]] == list(range(1, epochs + 1))
        events = httpx.get(f"{base}/v1/jobs/{jid}/events", timeout=10).json()["data"]
        logs = [e["data"].get("message", "") for e in events if e["type"] == "log"]
        assert any("resumed distill from its epoch" in m for m in logs), logs
        assert [e["data"]["status"] for e in events if e["type"] == "status"].count("running") == 2
        assert "worker exited with signal SIGKILL" in (tmp_path / "up.log").read_text()
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGINT)  # Ctrl-C: the supervisor stops API, worker and Redis in order
            try:
                assert up.wait(60) == 0
            finally:
                stop_group(up)
        log.close()
