"""A service stack for fault tests: a real redis-server (AOF on) that can be stopped and started again
on the same port and directory, real Celery workers that can be started, frozen and killed one by
one, and the API under uvicorn. Leases, heartbeats and attempts are short so that recovery shows
within seconds (the same code paths as production, with KD_LEASE_TTL_S etc. lowered)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import redis

from distillery.redis_server import EmbeddedRedis, free_port, start_redis

ROOT = Path(__file__).resolve().parents[2]
FAULT_ENV = {"KD_LEASE_TTL_S": "5", "KD_WORKER_HEARTBEAT_S": "0.5", "KD_MAX_ATTEMPTS": "2"}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120, every: float = 0.2) -> Any:
    t0 = time.time()
    while True:
        try:
            got = check()
        except (httpx.HTTPError, redis.RedisError):
            got = None
        if got:
            return got
        assert time.time() - t0 < timeout, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


def pool_children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


class Stack:
    def __init__(self, tmp: Path, dataset_root: Path, extra_env: dict[str, str] | None = None):
        self.tmp = tmp
        self.redis: EmbeddedRedis = start_redis(tmp / "redis")
        self.env = {**os.environ, "KD_REDIS_URL": self.redis.url, "KD_DATA_DIR": str(tmp / "data"),
                    "KD_DATASET_ROOT": str(dataset_root), "PYTHONUNBUFFERED": "1", **FAULT_ENV, **(extra_env or {})}
        for k in ("KD_API_KEYS", "KD_API_KEYS_FILE"):
            self.env.pop(k, None)
        self.workers: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api = self._spawn("api", [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app",
                                       "--host", "127.0.0.1", "--port", str(self.port)])
        self.r = redis.Redis.from_url(self.redis.url, decode_responses=True)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "a")
        try:
            return subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        finally:
            log.close()

    def log(self, name: str) -> str:
        p = self.tmp / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def hostname(self, name: str) -> str:
        return f"{name}@faults"

    def start_worker(self, name: str) -> subprocess.Popen:
        proc = self._spawn(name, [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker", "-Q", "cpu",
                                  "--pool", "prefork", "--concurrency", "1", "--hostname", self.hostname(name),
                                  "--loglevel", "INFO"])
        self.workers[name] = proc
        wait_for(f"worker {name} heartbeat", lambda: self.r.exists(f"kd:worker:{self.hostname(name)}")
                 or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, self.log(name)[-3000:]
        return proc

    def stop_worker(self, name: str) -> None:
        stop_group(self.workers.pop(name))

    def kill_worker(self, name: str) -> None:
        """kill -9 the worker's main process and its pool, all at once, no cleanup."""
        proc = self.workers.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def ensure_workers(self, *names: str) -> None:
        for name in list(self.workers):
            if name not in names or self.workers[name].poll() is not None:
                self.stop_worker(name)
        for name in names:
            if name not in self.workers:
                self.start_worker(name)

    def wait_ready(self, timeout: float = 120) -> None:
        wait_for("/readyz 200", lambda: httpx.get(self.base + "/readyz", timeout=5).status_code == 200, timeout)

    def restart_redis(self, down_s: float = 1.0) -> None:
        """Stop redis-server (SIGTERM: it writes its AOF and exits) and start it again on the same
        port and directory."""
        port, directory = self.redis.port, self.redis.directory
        assert self.redis.stop() == 0
        time.sleep(down_s)
        self.redis = start_redis(directory, port=port)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=60)

    def job(self, job_id: str) -> dict[str, Any]:
        return httpx.get(f"{self.base}/v1/jobs/{job_id}", timeout=30).json()

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return httpx.get(f"{self.base}/v1/jobs/{job_id}/events", timeout=30).json()["data"]

    def wait_final(self, job_id: str, timeout: float = 240) -> dict[str, Any]:
        return wait_for(f"job {job_id} to end", lambda: (j := self.job(job_id))["status"] in
                        ("succeeded", "failed", "cancelled") and j, timeout)

    def wait_epoch(self, job_id: str, epoch: int, timeout: float = 120) -> dict[str, Any]:
        return wait_for(f"job {job_id} epoch {epoch}", lambda: ((j := self.job(job_id)).get("metrics") or {}).get(
            "epoch", 0) >= epoch and j, timeout)

    def close(self) -> None:
        for name in list(self.workers):
            self.stop_worker(name)
        stop_group(self.api)
        self.redis.stop()
        self.r.close()


@contextmanager
def running_stack(tmp: Path, dataset_root: Path, worker: str = "w1") -> Iterator[Stack]:
    """A stack with one worker, ready (/readyz 200); stopped on exit whatever happened."""
    s = Stack(tmp, dataset_root)
    try:
        s.start_worker(worker)
        s.wait_ready()
        yield s
    finally:
        s.close()
