"""MNIST through the service end to end, as a client would run it: Hinton et al.'s MLP setting.

Starts `distillery up` (real Redis, one worker, the API) on a free port, trains a 1200-1200 MLP
teacher on labels alone (dropout 0.2, random shifts of up to 2 px), distills it into an 800-800 MLP
student with kd (baseline: true, so the same student is also trained without the teacher under the
same recipe), and prints and saves the accuracies, the KD gain and the times.

    .venv/bin/python benchmarks/mnist_service.py [--epochs 12] [--student-augment none|standard]

The dataset root (--dataset-root, default ../shared/datasets) must hold mnist/ with the IDX files.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(http: httpx.Client, job_id: str, label: str) -> dict[str, Any]:
    last = -1.0
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        p = job.get("progress") or {}
        if p.get("fraction") is not None and p["fraction"] - last >= 0.05:
            last = p["fraction"]
            print(f"  {label}: {job['status']} {p.get('phase')} epoch {p.get('epoch')}/{p.get('epochs')} "
                  f"{100 * p['fraction']:.0f}% eta {p.get('eta_s')} s, "
                  f"latest test top1 {job.get('metrics', {}).get('test_top1')}",
                  flush=True)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--student-augment", choices=["none", "standard"], default="none",
                    help="as in Hinton et al., the student (and its baseline) train without jitter by default; "
                         "the teacher always trains with it")
    ap.add_argument("--dataset-root", type=Path, default=ROOT.parent / "shared" / "datasets")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mnist_service.json")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="kd-mnist-"))
    port = _free_port()
    env = {**os.environ, "KD_DATASET_ROOT": str(args.dataset_root.resolve())}
    env.pop("KD_REDIS_URL", None)
    log = open(tmp / "up.log", "w")
    up = subprocess.Popen([str(ROOT / ".venv" / "bin" / "distillery"), "up", "--port", str(port), "--data-dir",
                           str(tmp / "data")], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    recipe = {"epochs": args.epochs, "batch_size": 128, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
              "weight_decay": 5e-4, "lr_schedule": "cosine", "seed": args.seed}
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            t0 = time.time()
            while True:
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() - t0 > 180 or up.poll() is not None:
                    sys.exit("service did not come up: " + (tmp / "up.log").read_text()[-1000:])
                time.sleep(1)
            started = time.time()
            teacher_spec = {"name": "mnist-teacher-1200x2", "dataset": {"name": "mnist", "augment": "standard"},
                            "student": {"architecture": "mlp", "kwargs": {"hidden": [1200, 1200], "dropout": 0.2}},
                            "distillation": {"method": "none"}, "training": recipe, "resources": {"device": "cpu"}}
            r = http.post("/v1/jobs", json=teacher_spec)
            r.raise_for_status()
            teacher = _wait(http, r.json()["id"], "teacher")
            if teacher["status"] != "succeeded":
                sys.exit(f"teacher job {teacher['status']}: {teacher.get('error')}")
            student_spec = {"name": "mnist-student-800x2",
                            "dataset": {"name": "mnist", "augment": args.student_augment},
                            "teacher": {"job": teacher["id"]},
                            "student": {"architecture": "mlp", "kwargs": {"hidden": [800, 800]}},
                            "distillation": {"method": "kd", "temperature": 4.0, "alpha": 0.9},
                            "training": recipe, "resources": {"device": "cpu"}, "baseline": True}
            r = http.post("/v1/jobs", json=student_spec)
            r.raise_for_status()
            student = _wait(http, r.json()["id"], "student")
            if student["status"] != "succeeded":
                sys.exit(f"student job {student['status']}: {student.get('error')}")
            rep = student["report"]
            result = {
                "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.processor() or
                platform.machine(), "cpus": os.cpu_count(), "command": "python benchmarks/mnist_service.py "
                + " ".join(sys.argv[1:]), "seed": args.seed, "epochs": args.epochs,
                "teacher": {"arch": "mlp 1200-1200 (dropout 0.2)", "top1": rep["teacher"]["top1"],
                            "params": rep["teacher"]["params"], "wall_seconds": teacher["report"]["wall_seconds"]},
                "student_kd": {"arch": f"mlp 800-800 (augment {args.student_augment})", "top1": rep["student"]["top1"],
                               "params": rep["student"]["params"]},
                "student_baseline": {"top1": rep["baseline"]["top1"]},
                "kd_gain_points": round(100 * rep["kd_gain"], 2), "agreement": rep["agreement"],
                "compression": rep["compression"], "student_job_wall_seconds": rep["wall_seconds"],
                "total_seconds": round(time.time() - started, 1),
            }
        print(json.dumps(result, indent=2))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
        log.close()


if __name__ == "__main__":
    main()
