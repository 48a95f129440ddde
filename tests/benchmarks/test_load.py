"""benchmarks/load.py at a small scale against a real `distillery up` (started by tests/harness.py, given to
the script with --url): its clients, its exactly-once audit and its report work. Its latency goal is a
benchmark result (docs/operations.md), not checked here."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT, clean_env, distillery_up


def test_load_script_runs_every_job_once_and_reports(tmp_path: Path) -> None:
    out, plot = tmp_path / "load.json", tmp_path / "status.png"
    env = clean_env(drop=("KD_REDIS_URL", "KD_DATA_DIR", "KD_API_WORKERS"))
    with distillery_up(tmp_path, env, "--queues", "cpu") as up:
        proc = subprocess.run([sys.executable, "benchmarks/load.py", "--url", up.base, "--jobs", "6", "--clients", "4",
                               "--submitters", "3", "--timeout", "240", "--out", str(out), "--plot", str(plot)],
                              cwd=ROOT, capture_output=True, text=True, timeout=420)
    assert out.exists(), proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["accepted"] == 6 and result["final_statuses"] == {"succeeded": 6}
    assert result["lost"] == 0 and result["duplicated_or_inconsistent"] == 0 and result["audit_problems"] == {}
    assert result["errors"] == {}
    assert result["submit_ms"]["n"] == 6 and result["status_ms"]["n"] > 0
    assert result["status_server_ms"]["n"] == result["status_ms"]["n"]  # every answer carried Server-Timing
    assert result["sse"]["streams"] >= 1 and result["sse"]["events"] >= 1
    assert set(result["client_loop_lag_ms"]) == {"submit", "poll", "follow"}
    assert plot.stat().st_size > 10_000
    assert proc.stdout.strip().splitlines()[-1] in ("PASS", f"FAIL: status p99 < {100} ms")
