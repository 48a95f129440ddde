"""Fixtures for the worker's parts against a real redis-server: a lifecycle whose sends are recorded."""
from __future__ import annotations

import pytest
import redis

from worker.lifecycle import Lifecycle
from worker.store import JobStore


class Recorder:
    """Stands in for the broker only in what it records: (job id, queue) of every message sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def __call__(self, job_id: str, queue: str) -> None:
        self.sent.append((job_id, str(queue)))


@pytest.fixture
def sent() -> Recorder:
    return Recorder()


@pytest.fixture
def lifecycle(redis_client: redis.Redis, sent: Recorder) -> Lifecycle:
    return Lifecycle(JobStore(redis_client), sent)
