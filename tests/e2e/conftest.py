"""The service as users run it: a real redis-server, a real Celery worker process, the API under
uvicorn, all on free ports, talked to over HTTP."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from distillery.redis_server import free_port, start_redis

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Service:
    base: str
    redis_url: str
    data_dir: Path
    worker: subprocess.Popen
    env: dict[str, str]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60)

    def submit(self, http: httpx.Client, spec: dict[str, Any]) -> str:
        r = http.post("/v1/jobs", json=spec)
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        return r.json()["id"]

    def wait(self, http: httpx.Client, job_id: str, timeout: float = 300,
             states: tuple[str, ...] = ("succeeded", "failed", "cancelled")) -> dict[str, Any]:
        t0 = time.time()
        while time.time() - t0 < timeout:
            job = http.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in states:
                return job
            assert self.worker.poll() is None, "the worker died"
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not in {states} after {timeout}s: {job}")


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory, dataset_root: Path) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("service")
    redis = start_redis(tmp / "redis")
    env = {**os.environ, "KD_REDIS_URL": redis.url, "KD_DATA_DIR": str(tmp / "data"),
           "KD_DATASET_ROOT": str(dataset_root), "PYTHONUNBUFFERED": "1", "KD_LEASE_TTL_S": "10"}
    env.pop("KD_API_KEYS", None)
    env.pop("KD_API_KEYS_FILE", None)
    port = free_port()
    wlog, alog = open(tmp / "worker.log", "w"), open(tmp / "api.log", "w")
    worker = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker", "-Q", "cpu",
                               "--pool", "prefork", "--concurrency", "1", "--hostname", "e2e@%h", "--loglevel", "INFO"],
                              cwd=ROOT, env=env, stdout=wlog, stderr=subprocess.STDOUT, start_new_session=True)
    api = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1",
                            "--port", str(port)], cwd=ROOT, env=env, stdout=alog, stderr=subprocess.STDOUT,
                           start_new_session=True)
    svc = Service(f"http://127.0.0.1:{port}", redis.url, tmp / "data", worker, env)
    try:
        t0 = time.time()
        while True:
            try:
                if httpx.get(svc.base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert api.poll() is None, (tmp / "api.log").read_text()[-2000:]
            assert worker.poll() is None, (tmp / "worker.log").read_text()[-2000:]
            assert time.time() - t0 < 120, "service not ready in 120 s"
            time.sleep(0.5)
        yield svc
    finally:
        _stop(api)
        _stop(worker)
        redis.stop()
        wlog.close()
        alog.close()
        if os.environ.get("KD_TEST_SHOW_LOGS"):
            print((tmp / "worker.log").read_text()[-5000:])
            print((tmp / "api.log").read_text()[-5000:])
