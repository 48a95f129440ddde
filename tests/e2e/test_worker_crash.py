"""A worker process killed mid-job (kill -9): the job is delivered again, resumes from its last epoch
checkpoint and succeeds with the full epoch count; its events show the resume."""
from __future__ import annotations

import os
import signal
import subprocess
import time

from tests.e2e.test_jobs import spec


def _pool_children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_killed_worker_process_resumes_from_checkpoint(service) -> None:
    epochs = 40
    with service.client() as http:
        jid = service.submit(http, spec(training={"epochs": epochs, "batch_size": 16, "lr": 0.01, "seed": 1}))
        t0 = time.time()
        while (http.get(f"/v1/jobs/{jid}").json().get("metrics") or {}).get("epoch", 0) < 3:
            assert time.time() - t0 < 120, "job did not reach epoch 3"
            time.sleep(0.2)
        children = _pool_children(service.worker.pid)
        assert children, "no prefork pool process to kill"
        for pid in children:
            os.kill(pid, signal.SIGKILL)  # the process running the job dies without any cleanup
        job = service.wait(http, jid, 240)
        assert job["status"] == "succeeded", job["error"]
        assert job["attempts"] >= 2
        rep = http.get(f"/v1/jobs/{jid}/report").json()
        assert [r["epoch"] for r in rep["epochs"]] == list(range(1, epochs + 1))
        logs = [e["data"].get("message", "") for e in http.get(f"/v1/jobs/{jid}/events").json()["data"]
                if e["type"] == "log"]
        assert any("resumed distill from its epoch" in m for m in logs), logs
