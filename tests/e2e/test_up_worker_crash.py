"""`distillery up` for real, as a user runs it: the installed command in a new session, in an empty folder,
with its embedded Redis on a free port and its own data dir. It serves the API and its docs; kill -9 of
the worker (main process and pool) mid-job makes the supervisor start a new worker, whose sweep finds
the job's lease lapsed and re-enqueues it; the job resumes from its last epoch checkpoint and succeeds
with every epoch; and Ctrl-C stops everything it started."""
from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

from tests.harness import (
    FAULT_ENV,
    clean_env,
    ctrl_c_and_check_nothing_is_left,
    distillery_up,
    pool_children,
    wait_for,
)
from tests.helpers import spec


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
    env = clean_env({**FAULT_ENV, "KD_DATASET_ROOT": str(dataset_root)},
                    drop=("KD_REDIS_URL", "KD_DATA_DIR", "KD_API_WORKERS"))
    with distillery_up(tmp_path, env, "--queues", "cpu", installed=True, cwd=tmp_path) as up:
        base = up.base
        assert httpx.get(base + "/docs", timeout=10).status_code == 200
        epochs = 8
        r = httpx.post(base + "/v1/jobs", json=spec(training={"epochs": epochs, "batch_size": 32, "lr": 0.01,
                                                               "seed": 1}), timeout=30)
        assert r.status_code == 202, r.text
        jid = r.json()["id"]
        wait_for("epoch 2", lambda: (httpx.get(f"{base}/v1/jobs/{jid}", timeout=10).json().get("metrics") or {})
                 .get("epoch", 0) >= 2, timeout=120, every=0.05)
        first = _worker_pid(up.proc.pid)
        assert first and pool_children(first), "no worker with a pool process under distillery up"
        os.killpg(first, signal.SIGKILL)  # the worker's whole process group: main process and pool

        job = wait_for("the job to end", lambda: (j := httpx.get(f"{base}/v1/jobs/{jid}", timeout=10).json())[
            "status"] in ("succeeded", "failed", "cancelled") and j, timeout=180)
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] == 2
        second = _worker_pid(up.proc.pid)
        assert second and second != first  # the supervisor started a new worker
        report = httpx.get(f"{base}/v1/jobs/{jid}/report", timeout=10).json()
        assert [e["epoch"] for e in report["epochs"]] == list(range(1, epochs + 1))
        events = httpx.get(f"{base}/v1/jobs/{jid}/events", timeout=10).json()["data"]
        logs = [e["data"].get("message", "") for e in events if e["type"] == "log"]
        assert any("resumed distill from its epoch" in m for m in logs), logs
        assert [e["data"]["status"] for e in events if e["type"] == "status"].count("running") == 2
        assert "worker exited with signal SIGKILL" in up.log()
        ctrl_c_and_check_nothing_is_left(up, tmp_path)
