"""Training faults through the runner against a real Redis: each ends as a clear failure, never a hang."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis

from api.settings import Settings
from worker.artifacts import ArtifactStore
from worker.runner import execute
from worker.store import JobStore

SPEC = {"student": {"architecture": "mlp", "kwargs": {"hidden": [32]}}, "dataset": {"name": "digits"},
        "distillation": {"method": "none"}, "training": {"epochs": 2, "batch_size": 64, "lr": 0.05}}


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_while_writing_the_checkpoint_fails_with_disk_full(redis_client: redis.Redis, redis_url: str,
                                                                     tmp_path: Path) -> None:
    store = JobStore(redis_client)
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, lease_ttl_s=30)
    rec, _ = store.create_job("t", SPEC, "cpu")
    # Every write to /dev/full fails with ENOSPC, as on a full disk: the epoch checkpoint is written there.
    workdir = ArtifactStore(settings.artifacts).job_dir(rec["id"])
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "checkpoint.tmp").symlink_to("/dev/full")
    assert execute(rec["id"], settings, store) == "failed"
    job = store.get_job(rec["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "disk_full", job["error"]
    assert "no space left" in job["error"]["message"] and str(workdir) in job["error"]["message"]
    assert store.lease_holder(rec["id"]) is None  # released: nothing left waiting on it
    errors = [e["data"]["message"] for e in store.events(rec["id"]) if e["type"] == "log"
              and e["data"].get("level") == "error"]
    assert errors and "no space left" in errors[0]


def test_divergence_fails_the_job_with_diverged_and_advice(redis_client: redis.Redis, redis_url: str,
                                                           tmp_path: Path) -> None:
    store = JobStore(redis_client)
    spec = {**SPEC, "student": {"architecture": "mlp", "kwargs": {"hidden": [64]}},
            "training": {"epochs": 5, "batch_size": 32, "lr": 5.0, "momentum": 0.9, "lr_schedule": "constant"}}
    rec, _ = store.create_job("t", spec, "cpu")
    assert execute(rec["id"], Settings(redis_url=redis_url, data_dir=tmp_path), store) == "failed"
    err = store.get_job(rec["id"])["error"]
    assert err["code"] == "diverged" and "lower training.lr (now 5)" in err["message"]
