"""benchmarks/data_scale.py at a tiny scale (60 images at 32 px): it starts `distillery up` itself, uploads,
runs both jobs through HTTP, times the three input pipelines and writes its JSON. Its goals are benchmark
results (docs/benchmarks.md, "Data at scale"); no timing is asserted here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT


def test_data_scale_script_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "data_scale.json"
    env = {k: v for k, v in os.environ.items() if k not in ("KD_REDIS_URL", "KD_DATA_DIR", "KD_API_KEYS",
                                                           "KD_API_KEYS_FILE", "KD_PREPARED_DIR")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, "benchmarks/data_scale.py", "--images", "60", "--size", "32",
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["images"] == 60 and r["test_images"] == 10 and r["size"] == 32 and r["seed"] == 0
    assert {"cpu", "cores", "ram_gib"} <= set(r["machine"]) and r["torch"] and r["date"]
    assert len(r["load_average_start"]) == 3 and len(r["load_average_end"]) == 3
    assert r["upload"]["format"] == "imagefolder" and r["upload"]["api_peak_rss_anon_mib"] > 0
    for label in ("teacher_job", "kd_job"):
        job = r[label]
        assert job["status"] == "succeeded", job["error"]
        assert len(job["epochs"]) == 1 and job["train_images_per_s"] > 0 and 0 <= job["test_top1"] <= 1
    assert r["teacher_job"]["prepare"]["events"] > 0 and r["teacher_job"]["prepare"]["images"] == 70
    assert r["teacher_job"]["prepare"]["ready_seconds"] is not None
    assert r["kd_job"]["prepare"]["events"] == 0  # the store was reused
    assert r["worker_peak_rss_anon_mib"] > 0 and r["first_epoch_with_prepare_seconds"] > 0
    p = r["pipeline"]
    for key in ("a_prepared_batches", "b_torchvision_imagefolder", "c_dataloader_memmap"):
        assert p[key]["images"] == 60 and p[key]["images_per_s"] > 0
    assert p["a_over_b"] > 0 and p["a_over_c"] > 0
    assert len(r["goals"]) == 4
    assert all(v.startswith(("PASS", "FAIL")) for v in r["goals"].values())
    assert r["goals"]["both jobs succeeded, the second reused the store"].startswith("PASS")
