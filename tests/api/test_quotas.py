"""Tenant limits (api/quotas.py) called directly on a real Redis: slots count the tenant's open jobs,
reservations of a submission that failed are given back, ended jobs free their slot, and upload bytes
are reserved chunk by chunk and committed or released."""
from __future__ import annotations

import pytest
import redis

from api.errors import Problem
from api.quotas import Quotas
from worker.lifecycle import Lifecycle
from worker.store import JobStore


def test_job_slots_count_open_jobs(redis_client: redis.Redis) -> None:
    quotas = Quotas(redis_client, max_active_jobs=2, max_upload_bytes=None)
    lc = Lifecycle(JobStore(redis_client), lambda job_id, queue: None)
    ids = []
    for _ in range(2):
        with quotas.job_slots("t") as slots:
            ids.append(lc.submit("t", {}, "cpu")[0]["id"])
            slots.bind(ids[-1])
    assert quotas.open_jobs("t") == 2
    with pytest.raises(Problem) as info:
        with quotas.job_slots("t"):
            pass
    assert info.value.status == 429 and info.value.headers["Retry-After"]
    with quotas.job_slots("u"):  # another tenant
        pass
    with pytest.raises(RuntimeError):  # a submission that fails gives its reservation back
        with quotas.job_slots("u", 2):
            raise RuntimeError
    assert redis_client.zcard("kd:tenant:u:open") == 0
    lc.cancel(ids[0])  # an ended job frees its slot
    with quotas.job_slots("t") as slots:
        assert slots.tokens
    with quotas.job_slots("t", 0) as slots:  # an idempotent replay needs none
        assert not slots.tokens


def test_upload_bytes_reserved_committed_and_released(redis_client: redis.Redis) -> None:
    quotas = Quotas(redis_client, max_active_jobs=None, max_upload_bytes=100)
    quotas.reserve_bytes("t", "up1", 60)
    with pytest.raises(Problem) as info:
        quotas.reserve_bytes("t", "up2", 50)  # two uploads in flight cannot overshoot together
    assert info.value.status == 413 and "100 bytes" in info.value.detail
    quotas.release_bytes("t", "up2")
    quotas.commit_bytes("t", "up1", 60)
    assert quotas.upload_bytes("t") == 60
    quotas.reserve_bytes("t", "up3", 40)
    quotas.release_bytes("t", "up3")
    assert quotas.upload_bytes("t") == 60
