"""Training faults through the runner against a real Redis: each ends as a clear failure, never a hang."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from torch import nn

from kdcore.models import MODELS, register_model
from kdcore.models.simple import MLPParams, mlp
from worker.artifacts import ArtifactStore
from worker.config import WorkerSettings as Settings
from worker.lifecycle import Lifecycle
from worker.runner import execute
from worker.store import JobStore


def _no_broker(job_id: str, queue: str) -> None:
    """These tests deliver the job themselves by calling execute(): the queued message is not needed."""


SPEC = {"student": {"architecture": "mlp", "kwargs": {"hidden": [32]}}, "dataset": {"name": "digits"},
        "distillation": {"method": "none"}, "training": {"epochs": 2, "batch_size": 64, "lr": 0.05}}


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_while_writing_the_checkpoint_fails_with_disk_full(redis_client: redis.Redis, redis_url: str,
                                                                     tmp_path: Path) -> None:
    store = JobStore(redis_client)
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, lease_ttl_s=30)
    rec, _ = Lifecycle(store, _no_broker).submit("t", SPEC, "cpu")
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
            # no rescues allowed: the first blow-up fails the job (kdcore/rescue.py; with rescues this one recovers)
            "training": {"epochs": 5, "batch_size": 32, "lr": 5.0, "momentum": 0.9, "lr_schedule": "constant",
                         "max_rescues": 0}}
    rec, _ = Lifecycle(store, _no_broker).submit("t", spec, "cpu")
    assert execute(rec["id"], Settings(redis_url=redis_url, data_dir=tmp_path), store) == "failed"
    err = store.get_job(rec["id"])["error"]
    assert err["code"] == "diverged" and "lower training.lr (now 5)" in err["message"]
    assert "blew up" in err["message"] and "0 rescue(s) already spent" in err["message"]


@pytest.fixture
def oom_architecture() -> Iterator[str]:
    """A real mlp whose forward raises torch.OutOfMemoryError for training batches above 32 samples, as
    CUDA does when a batch does not fit (CPU-only machines cannot run out of CUDA memory for real)."""
    name = "test_oom_above_32"

    @register_model(name, params=MLPParams)
    def factory(**kw: Any) -> nn.Module:
        model = mlp(**kw)

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if module.training and args[0].shape[0] > 32:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        model.register_forward_pre_hook(hook)
        return model

    try:
        yield name
    finally:
        MODELS._entries.pop(name, None)


@pytest.mark.parametrize("batch_size,outcome", [(64, "succeeded"), (128, "failed")])
def test_cuda_out_of_memory_retries_once_at_half_the_batch(oom_architecture: str, batch_size: int, outcome: str,
                                                           redis_client: redis.Redis, redis_url: str,
                                                           tmp_path: Path) -> None:
    store = JobStore(redis_client)
    spec = {**SPEC, "student": {"architecture": oom_architecture, "kwargs": {"hidden": [32]}},
            "training": {"epochs": 2, "batch_size": batch_size, "lr": 0.05}}
    rec, _ = Lifecycle(store, _no_broker).submit("t", spec, "cpu")
    assert execute(rec["id"], Settings(redis_url=redis_url, data_dir=tmp_path), store) == outcome
    job = store.get_job(rec["id"])
    logs = [e["data"]["message"] for e in store.events(rec["id"]) if e["type"] == "log"]
    assert any(f"out of memory at batch size {batch_size}; retrying once from the start with batch size "
               f"{batch_size // 2}" in m for m in logs), logs
    if outcome == "succeeded":  # 64 -> 32 fits
        assert [r["epoch"] for r in job["report"]["epochs"]] == [1, 2]
    else:  # 128 -> 64 does not: one retry, then a clear failure
        assert job["error"]["code"] == "cuda_oom"
        assert "batch_size 128" in job["error"]["message"] and "again at 64" in job["error"]["message"]
