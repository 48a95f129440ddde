"""The one place tests start real services: redis-server, Celery workers, the API under uvicorn (as a
subprocess or in a thread of the test process) and `distillery up|api`, all on free ports, each in its own
process group so that it can be frozen, killed or stopped with whatever it started.

    with running_stack(tmp, dataset_root, workers=("w1",)) as stack:   # redis + API + workers, /readyz 200
        job_id = stack.submit(spec)
        job = stack.wait(job_id)                                       # a final state

A `Stack` is what the e2e `service` fixture is (one worker, started once per session) and what the fault
tests drive (workers started, frozen and killed one by one, Redis and the API restarted). `FAULT_ENV`
lowers leases, heartbeats and attempts so that recovery shows within seconds, through the same code paths
as production.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis

from distillery.redis_server import EmbeddedRedis, free_port, start_redis

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MNIST_DIR = SHARED / "datasets" / "mnist"
FINAL = ("succeeded", "failed", "cancelled")
FAULT_ENV = {"KD_LEASE_TTL_S": "5", "KD_WORKER_HEARTBEAT_S": "0.5", "KD_MAX_ATTEMPTS": "2",
             "KD_UNSENT_GRACE_S": "2"}
SHOW_LOGS = bool(os.environ.get("KD_TEST_SHOW_LOGS"))


# --- waiting and processes -----------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120, every: float = 0.1) -> Any:
    """Polls `check` until it returns something truthy and returns that; an HTTP or Redis error counts
    as not yet (the service may be restarting)."""
    t0 = time.monotonic()
    while True:
        try:
            got = check()
        except (httpx.HTTPError, redis.RedisError):
            got = None
        if got:
            return got
        assert time.monotonic() - t0 < timeout, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(every)


def pool_children(pid: int) -> list[int]:
    """The direct children of a process (a Celery worker's pool processes, a supervisor's children)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def clean_env(extra: Mapping[str, str] | None = None, drop: Sequence[str] = ()) -> dict[str, str]:
    """This process's environment without API keys (the service runs open on loopback), unbuffered, with
    one torch thread per job unless the caller says otherwise."""
    env = {k: v for k, v in os.environ.items() if k not in ("KD_API_KEYS", "KD_API_KEYS_FILE", *drop)}
    env["PYTHONUNBUFFERED"] = "1"
    # one torch thread per worker: on 2 cores the worker, the API and the test process run at once, and
    # OpenMP threads of several processes spinning against each other cost more than they bring
    env.setdefault("KD_TORCH_THREADS", "1")
    env.update(extra or {})
    return env


def spawn(argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    """Starts a process in a new session (its own process group), output appended to `log`."""
    with open(log, "a") as out:
        return subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_group(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM to the process group (after SIGCONT: a frozen process cannot act on it), SIGKILL after
    `timeout`."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
    except ProcessLookupError:
        proc.wait()


def kill_group(proc: subprocess.Popen) -> None:
    """kill -9 of the process group: main process and everything it started, no cleanup."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def worker_argv(hostname: str, queues: str = "cpu", pool: str = "prefork", concurrency: int = 1) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker", "-Q", queues, "--pool", pool,
            "--concurrency", str(concurrency), "--hostname", hostname, "--loglevel", "INFO"]


def api_argv(port: int, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", host, "--port", str(port)]


def distillery_argv(*args: str, installed: bool = False) -> list[str]:
    """`distillery ...` as `python -m distillery`, or as the installed console script."""
    head = [str(Path(sys.executable).parent / "distillery")] if installed else [sys.executable, "-m", "distillery"]
    return [*head, *args]


def http_status(url: str, timeout: float = 2) -> int | None:
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return None


# --- a whole stack ---------------------------------------------------------------------------------


class Stack:
    """A real redis-server (AOF on) that can be restarted on the same port and directory, the API under
    uvicorn in a subprocess, and named Celery workers, with job helpers over HTTP."""

    def __init__(self, tmp: Path, dataset_root: Path | None = None, env: Mapping[str, str] | None = None):
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.redis: EmbeddedRedis = start_redis(tmp / "redis")
        self.data_dir = tmp / "data"
        base_env = {"KD_REDIS_URL": self.redis.url, "KD_DATA_DIR": str(self.data_dir)}
        if dataset_root is not None:
            base_env["KD_DATASET_ROOT"] = str(dataset_root)
        self.env = clean_env({**base_env, **(env or {})})
        self.workers: dict[str, subprocess.Popen] = {}
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.r = redis.Redis.from_url(self.redis.url, decode_responses=True)
        self.api = self.start_api()

    @property
    def redis_url(self) -> str:
        return self.redis.url

    # processes

    def spawn(self, name: str, argv: Sequence[str]) -> subprocess.Popen:
        return spawn(argv, self.env, self.tmp / f"{name}.log")

    def log(self, name: str) -> str:
        p = self.tmp / f"{name}.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start_api(self) -> subprocess.Popen:
        self.api = self.spawn("api", api_argv(self.port))
        return self.api

    def restart_api(self) -> None:
        """kill -9 of the API (requests in flight die with it) and a new one on the same port."""
        kill_group(self.api)
        self.start_api()

    def hostname(self, name: str) -> str:
        return f"{name}@stack"

    def start_worker(self, name: str = "w1", queues: str = "cpu") -> subprocess.Popen:
        """Starts a worker and waits for its first heartbeat (its consumer runs)."""
        proc = self.spawn(name, worker_argv(self.hostname(name), queues))
        self.workers[name] = proc
        wait_for(f"worker {name} heartbeat", lambda: self.r.exists(f"kd:worker:{self.hostname(name)}")
                 or proc.poll() is not None, timeout=120, every=0.05)
        assert proc.poll() is None, self.log(name)[-3000:]
        return proc

    @property
    def worker(self) -> subprocess.Popen:
        """The worker of a one-worker stack."""
        (proc,) = self.workers.values()
        return proc

    def stop_worker(self, name: str) -> None:
        stop_group(self.workers.pop(name))

    def kill_worker(self, name: str) -> None:
        """kill -9 of the worker's main process and its pool, all at once, no cleanup."""
        kill_group(self.workers.pop(name))

    def ensure_workers(self, *names: str) -> None:
        """Exactly these workers, alive (others stopped, dead ones replaced)."""
        for name in list(self.workers):
            if name not in names or self.workers[name].poll() is not None:
                self.stop_worker(name)
        for name in names:
            if name not in self.workers:
                self.start_worker(name)

    def wait_ready(self, timeout: float = 120) -> None:
        def ready() -> bool:
            assert self.api.poll() is None, "the API exited:\n" + self.log("api")[-3000:]
            return httpx.get(self.base + "/readyz", timeout=5).status_code == 200
        wait_for("/readyz 200", ready, timeout, every=0.05)

    def restart_redis(self, down_s: float = 1.0) -> None:
        """Stops redis-server (SIGTERM: it writes its AOF and exits) and starts it again on the same
        port and directory."""
        port, directory = self.redis.port, self.redis.directory
        assert self.redis.stop() == 0
        time.sleep(down_s)
        self.redis = start_redis(directory, port=port)

    def close(self) -> None:
        for name in list(self.workers):
            self.stop_worker(name)
        stop_group(self.api)
        self.redis.stop()
        self.r.close()
        if SHOW_LOGS:
            for log in sorted(self.tmp.glob("*.log")):
                print(f"==== {log.name}\n{log.read_text(errors='replace')[-6000:]}")

    # jobs over HTTP

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=kw.pop("timeout", 60), **kw)

    def submit(self, spec: dict[str, Any], headers: Mapping[str, str] | None = None) -> str:
        r = httpx.post(f"{self.base}/v1/jobs", json=spec, headers=headers, timeout=60)
        assert r.status_code == 202, r.text
        assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        return r.json()["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return httpx.get(f"{self.base}/v1/jobs/{job_id}", timeout=30).json()

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return httpx.get(f"{self.base}/v1/jobs/{job_id}/events", timeout=30).json()["data"]

    def report(self, job_id: str) -> dict[str, Any]:
        return httpx.get(f"{self.base}/v1/jobs/{job_id}/report", timeout=30).json()

    def record(self, job_id: str) -> dict[str, str]:
        """The job's hash in Redis, as the store wrote it."""
        return self.r.hgetall(f"kd:job:{job_id}")

    def wait(self, job_id: str, timeout: float = 300, states: Sequence[str] = FINAL) -> dict[str, Any]:
        """The job once its status is one of `states`; fails at once when every worker has exited."""
        def reached() -> dict[str, Any] | None:
            job = self.job(job_id)
            if job["status"] in states:
                return job
            assert not self.workers or any(p.poll() is None for p in self.workers.values()), \
                "every worker exited:\n" + "\n".join(self.log(n)[-2000:] for n in self.workers)
            return None
        return wait_for(f"job {job_id} in {tuple(states)}", reached, timeout)

    def wait_final(self, job_id: str, timeout: float = 240) -> dict[str, Any]:
        return self.wait(job_id, timeout)

    def wait_epoch(self, job_id: str, epoch: int, timeout: float = 120) -> dict[str, Any]:
        return wait_for(f"job {job_id} epoch {epoch}", lambda: ((j := self.job(job_id)).get("metrics") or {}).get(
            "epoch", 0) >= epoch and j, timeout, every=0.05)


@contextmanager
def running_stack(tmp: Path, dataset_root: Path | None = None, workers: Sequence[str] = ("w1",),
                  env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    """A stack with these workers, ready (/readyz 200); stopped on exit whatever happened."""
    stack = Stack(tmp, dataset_root, env)
    try:
        for name in workers:
            stack.start_worker(name)
        stack.wait_ready()
        yield stack
    finally:
        stack.close()


# --- the API in this process -----------------------------------------------------------------------


@contextmanager
def serve_app(settings: Any, host: str = "127.0.0.1") -> Iterator[str]:
    """The API app served by a real uvicorn on a free port in a thread of the test process (what the
    in-memory TestClient cannot show: a body streaming in chunks, many requests at once, the peer
    address); yields the base URL on 127.0.0.1."""
    import uvicorn

    from api.main import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host=host, port=port, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for("uvicorn to start", lambda: server.started or not thread.is_alive(), timeout=30, every=0.02)
    assert thread.is_alive(), "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


# --- the `distillery` command ----------------------------------------------------------------------


@contextmanager
def process(argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path = ROOT) -> Iterator[subprocess.Popen]:
    """Any command in its own process group; its group stopped on exit."""
    proc = spawn(argv, env, log, cwd)
    try:
        yield proc
    finally:
        stop_group(proc, timeout=30)


@dataclass
class Up:
    proc: subprocess.Popen
    base: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def distillery_up(tmp: Path, env: Mapping[str, str], *args: str, ready: str = "/readyz", ready_timeout: float = 180,
                  installed: bool = False, cwd: Path = ROOT) -> Iterator[Up]:
    """`distillery up --port <free> --data-dir tmp/data ARGS` in a new session, as a user runs it, until
    `ready` answers 200. On leaving normally it gets Ctrl-C (SIGINT to its group: the supervisor stops
    API, worker and Redis in order) and must exit 0; when the test failed, its group is killed."""
    port = free_port()
    log_path = tmp / "up.log"
    proc = spawn(distillery_argv("up", "--port", str(port), "--data-dir", str(tmp / "data"), *args,
                                 installed=installed), env, log_path, cwd)
    up = Up(proc, f"http://127.0.0.1:{port}", log_path)
    ok = False
    try:
        def answered() -> bool:
            assert proc.poll() is None, "distillery up exited early:\n" + up.log()[-3000:]
            return http_status(up.base + ready) == 200
        wait_for(f"distillery up: {ready} 200", answered, ready_timeout, every=0.2)
        yield up
        ok = True
    finally:
        code: int | str | None = None
        if ok and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                code = "still running 60 s after Ctrl-C"
        kill_group(proc)
        assert code in (None, 0), f"distillery up after Ctrl-C: {code}\n" + up.log()[-3000:]


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pids: Sequence[int]) -> list[int]:
    """Those of `pids` still running (zombies count as gone)."""
    left = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            left.append(pid)
    return left


def running_from(folder: Path) -> list[int]:
    """Processes working in `folder` or naming it on their command line (what the contract harness counts
    as left over)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd.startswith(str(folder)) or str(folder) in cmd:
            found.append(int(entry.name))
    return found


def ctrl_c_and_check_nothing_is_left(up: Up, folder: Path, spare: Sequence[int] = ()) -> None:
    """Ctrl-C to `distillery up`, then: it exits 0 within 20 s, says it stopped, and nothing it started (nor
    anything else working in or naming `folder`, except the `spare` pids) is left."""
    tree = descendants(up.proc.pid)
    assert tree, "no children?"
    os.killpg(up.proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    try:
        up.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError("distillery up still running 20 s after Ctrl-C:\n" + up.log()[-3000:]) from None
    left = alive(tree) + [pid for pid in running_from(folder) if pid not in (os.getpid(), *spare)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"left running after Ctrl-C: {left}\n" + up.log()[-3000:]
    assert up.proc.returncode == 0
    assert "stopped" in up.log()
