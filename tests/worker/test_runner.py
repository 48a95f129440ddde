"""The runner against a real Redis, called directly (the e2e suite covers it under Celery)."""
from __future__ import annotations

from pathlib import Path

import redis

from worker.config import WorkerSettings as Settings
from worker.lifecycle import Lifecycle
from worker.runner import LEASED_ELSEWHERE, execute
from worker.store import JobStore


def _no_broker(job_id: str, queue: str) -> None:
    """These tests deliver the job themselves by calling execute(): the queued message is not needed."""


SPEC = {"student": {"architecture": "mlp", "kwargs": {"hidden": [32]}}, "dataset": {"name": "digits"},
        "distillation": {"method": "none"}, "training": {"epochs": 2, "batch_size": 64, "lr": 0.05}}


def _settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(redis_url=redis_url, data_dir=tmp_path, lease_ttl_s=30)


def test_runs_a_job_to_success_and_a_second_delivery_does_nothing(redis_client: redis.Redis, redis_url: str,
                                                                   tmp_path: Path) -> None:
    store = JobStore(redis_client)
    rec, _ = Lifecycle(store, _no_broker).submit("t", SPEC, "cpu")
    settings = _settings(redis_url, tmp_path)
    assert execute(rec["id"], settings, store) == "succeeded"
    job = store.get_job(rec["id"])
    assert job["status"] == "succeeded" and job["report"]["student"]["top1"] > 0.5 and job["attempts"] == 1
    assert (tmp_path / "artifacts" / "jobs" / rec["id"] / "student.safetensors").is_file()
    assert not (tmp_path / "artifacts" / "jobs" / rec["id"] / "checkpoint.pt").exists()
    n_events = len(store.events(rec["id"]))
    assert execute(rec["id"], settings, store) == "already succeeded"  # redelivered after the end
    assert len(store.events(rec["id"])) == n_events and store.get_job(rec["id"])["attempts"] == 1


def test_a_delivery_while_the_lease_lives_does_not_run_the_job(redis_client: redis.Redis, redis_url: str,
                                                               tmp_path: Path) -> None:
    store = JobStore(redis_client)
    rec, _ = Lifecycle(store, _no_broker).submit("t", SPEC, "cpu")
    holder = store.acquire_lease(rec["id"], 30)  # as if another worker were running it
    assert holder
    assert execute(rec["id"], _settings(redis_url, tmp_path), store) == LEASED_ELSEWHERE
    job = store.get_job(rec["id"])
    assert job["status"] == "queued" and job["attempts"] == 0
    assert store.lease_holder(rec["id"]) == holder


def test_cancel_before_start_and_bounded_attempts(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    store = JobStore(redis_client)
    settings = _settings(redis_url, tmp_path)
    rec, _ = Lifecycle(store, _no_broker).submit("t", SPEC, "cpu")
    store.set_fields(rec["id"], cancel=1)
    assert execute(rec["id"], settings, store) == "cancelled"
    dying, _ = Lifecycle(store, _no_broker).submit("t", SPEC, "cpu")
    for _ in range(settings.max_attempts):
        store.incr_attempts(dying["id"])  # deliveries whose worker died mid-run
    assert execute(dying["id"], settings, store) == "failed"
    err = store.get_job(dying["id"])["error"]
    assert err["code"] == "worker_lost" and "attempts" in err["message"]


def test_bad_dataset_root_fails_with_a_clear_error(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    store = JobStore(redis_client)
    rec, _ = Lifecycle(store, _no_broker).submit("t", {**SPEC, "dataset": {"name": "mnist"}}, "cpu")
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, dataset_root=tmp_path / "nowhere")
    assert execute(rec["id"], settings, store) == "failed"
    err = store.get_job(rec["id"])["error"]
    assert err["code"] == "bad_dataset" and "nowhere" in err["message"]


def test_a_teacher_that_cannot_run_fails_the_job_as_teacher_error(redis_client: redis.Redis, redis_url: str,
                                                                   tmp_path: Path) -> None:
    """A .pt2 that fixed its images at 10x10, given digits' 8x8 (the submit-time check is bypassed here): the
    one-sample dry run fails first, with the program's own guard in the message, never as `internal`."""
    import torch
    from torch import nn

    model = nn.Sequential(nn.Flatten(), nn.Linear(100, 10)).eval()
    path = tmp_path / "ten.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 1, 10, 10),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},)), str(path))
    store = JobStore(redis_client)
    store.put_artifact({"id": "art_ten", "tenant": "t", "filename": path.name, "sha256": "0", "size": 1,
                        "format": "export", "created_at": "now", "path": str(path), "meta": {}})
    spec = {**SPEC, "teacher": {"checkpoint": "art_ten"}, "distillation": {"method": "kd"}}
    rec, _ = Lifecycle(store, _no_broker).submit("t", spec, "cpu")
    assert execute(rec["id"], _settings(redis_url, tmp_path), store) == "failed"
    err = store.get_job(rec["id"])["error"]
    assert err["code"] == "teacher_error", err
    assert "(1, 1, 8, 8)" in err["message"] and "10" in err["message"]
    assert not any(e["type"] == "phase" for e in store.events(rec["id"]))  # failed before training began
