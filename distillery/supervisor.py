"""`distillery up`: run Redis, one worker and the API as child processes of one supervisor.

Every child runs in its own session, hence its own process group, so that
- Ctrl-C in a terminal reaches only the supervisor, which then stops the children in order
  (API and worker first, Redis last) instead of all of them dying at once mid-write;
- the supervisor can signal a child together with everything it started (Celery's prefork pool
  processes), which is how it makes sure that nothing outlives it.

A child that exits while the stack runs is started again after a delay that doubles from 1 s up
to 30 s and goes back to 1 s once a run lasted a minute, so that a crash loop neither spins nor
leaves a recovered service waiting long after its next failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from distillery import redis_server
from worker.queues import Queue

WORKER_NICE = 10  # see build_children: the API answers first, the worker trains with the rest

log = logging.getLogger("distillery")

# How long a child may take to stop after SIGTERM before its group gets SIGKILL. Celery's warm
# shutdown lets a running task finish, which can take far longer than anyone waits at Ctrl-C: the
# job is then delivered again and resumes from its last checkpoint, as after a crash.
# Worst case 10 + 1.5 + 3 + 1.5 s: well within the 20 s after which a user (or a test harness)
# would count processes left behind.
APP_STOP_GRACE_S = 10.0
REDIS_STOP_GRACE_S = 3.0
KILL_WAIT_S = 1.5
POLL_INTERVAL_S = 0.5


class StopRequest:
    """Counts stop requests: the first asks for an orderly stop, a second one (Ctrl-C again) to
    kill at once. Signal handlers only bump a counter, since one that takes a lock (as
    threading.Event.set does) can deadlock against the code it interrupted."""

    def __init__(self) -> None:
        self.count = 0

    def request(self) -> None:
        self.count += 1

    @property
    def stopping(self) -> bool:
        return self.count >= 1

    @property
    def hurry(self) -> bool:
        return self.count >= 2

    def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking early on a stop request."""
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))


class Backoff:
    """Restart delays: `initial`, doubling up to `maximum`; back to `initial` after a run of at
    least `reset_after` seconds."""

    def __init__(self, initial: float = 1.0, maximum: float = 30.0, reset_after: float = 60.0) -> None:
        self.initial, self.maximum, self.reset_after = initial, maximum, reset_after
        self._next = initial

    def next_delay(self, uptime: float) -> float:
        if uptime >= self.reset_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    proc_root = Path("/proc")
    if not proc_root.is_dir():  # not Linux: ask the kernel whether the group has any member
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name, which is in parentheses and may itself hold spaces.
        fields = stat[stat.rfind(")") + 2 :].split()
        state, process_group = fields[0], int(fields[2])
        if process_group == pgid and state != "Z":
            members.append(int(entry.name))
    return members


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: have Linux send it SIGTERM should the supervisor itself be
    killed (kill -9) and never get to stop it. Best effort; elsewhere it does nothing."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _prepare_child(nice: int) -> None:
    _die_with_parent()
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"code {code}"


class Child:
    """One supervised process. `ready` (optional) runs after each start and raises if the process
    does not become usable, e.g. Redis not answering PING."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: dict[str, str],
        layer: int,
        ready: Callable[[Child], None] | None = None,
        backoff: Backoff | None = None,
        nice: int = 0,
    ) -> None:
        self.name, self.argv, self.env = name, list(argv), env
        self.nice = nice
        # Children start in ascending layer order and stop in descending order: Redis (0) is up
        # before the worker and API (1) need it and goes down only after they have stopped.
        self.layer = layer
        self.ready = ready
        self.backoff = backoff or Backoff()
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.restart_at: float | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> bool:
        """Start the process; False (and the process gone) when it could not start or get ready."""
        self.restart_at = None
        self.started_at = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=partial(_prepare_child, self.nice),
            )
        except OSError as exc:
            log.error("%s could not be started: %s", self.name, exc)
            self.proc = None
            return False
        log.info("%s started (pid %d)", self.name, self.proc.pid)
        if self.ready is not None:
            try:
                self.ready(self)
            except Exception as exc:  # any failure to get ready is treated like an exit
                log.error("%s did not get ready: %s", self.name, exc)
                self.kill()
                self.proc.wait()
                return False
        return True

    def check(self, now: float) -> None:
        """Notice an exit and schedule a restart; do the restart once its delay is over."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.start()
            return
        code = None if self.proc is None else self.proc.poll()
        if self.proc is not None and code is None:
            return
        uptime = now - self.started_at
        # What the dead leader left behind (Celery pool processes) must not run on beside the
        # next one.
        self.kill()
        delay = self.backoff.next_delay(uptime)
        why = "could not start" if code is None else f"exited with {describe_exit(code)}"
        log.warning("%s %s after %.0f s; restarting in %.0f s", self.name, why, uptime, delay)
        self.restart_at = now + delay

    def terminate(self) -> None:
        """SIGTERM to the leader only: Celery and uvicorn then shut down their own helpers in order,
        which a signal to the whole group would cut short."""
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the whole process group."""
        if self.proc is not None:
            signal_group(self.proc.pid, signal.SIGKILL)

    def gone(self) -> bool:
        """True once the leader has exited and no other member of its group is left."""
        if self.proc is None:
            return True
        return self.proc.poll() is not None and not group_members(self.proc.pid)


class Supervisor:
    def __init__(
        self,
        children: Sequence[Child],
        stop: StopRequest,
        health_url: str | None = None,
        banner: str = "",
    ) -> None:
        self.children = sorted(children, key=lambda c: c.layer)  # stable: keeps order within a layer
        self.stop = stop
        self.health_url, self.banner = health_url, banner
        self._announced = False

    def run(self) -> int:
        """Start everything, supervise until a stop is requested, then stop everything. Returns the exit
        status for the command: 0 after a requested stop, 1 when the stack could not start."""
        status = 0
        try:
            for child in self.children:
                if self.stop.stopping:
                    break
                if not child.start():
                    if self.stop.stopping:  # interrupted while waiting for it to get ready
                        break
                    log.error("could not start %s; stopping", child.name)
                    status = 1
                    break
            else:
                while not self.stop.stopping:
                    now = time.monotonic()
                    for child in self.children:
                        child.check(now)
                    self._announce_when_healthy()
                    self.stop.sleep(POLL_INTERVAL_S)
        finally:
            log.info("stopping%s", " (Ctrl-C again to kill at once)" if self.stop.stopping else "")
            self.shutdown()
        return status

    def shutdown(self) -> None:
        for layer in sorted({c.layer for c in self.children}, reverse=True):
            members = [c for c in self.children if c.layer == layer]
            self._stop_together(members, APP_STOP_GRACE_S if layer > 0 else REDIS_STOP_GRACE_S)
        left = [c.name for c in self.children if not c.gone()]
        if left:
            log.error("still running after SIGKILL: %s", ", ".join(left))
        else:
            log.info("stopped")

    def _stop_together(self, children: Sequence[Child], grace: float) -> None:
        for child in children:
            child.terminate()
        self._wait(lambda: all(not c.running for c in children), grace, stop_on_hurry=True)
        for child in children:
            if child.running:
                log.warning("%s did not stop within %.0f s; killing it", child.name, grace)
            child.kill()
        self._wait(lambda: all(c.gone() for c in children), KILL_WAIT_S, stop_on_hurry=False)

    def _wait(self, done: Callable[[], bool], timeout: float, stop_on_hurry: bool) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            if stop_on_hurry and self.stop.hurry:  # a second Ctrl-C: kill now
                return
            time.sleep(0.05)

    def _announce_when_healthy(self) -> None:
        if self._announced or not self.health_url:
            return
        try:
            with urllib.request.urlopen(self.health_url, timeout=1) as response:
                healthy = response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            healthy = False
        if healthy:
            print(self.banner, flush=True)
            self._announced = True


def detect_queues() -> list[str]:
    """`cpu`, plus `gpu` when nvidia-smi lists a GPU. The supervisor must not import torch (nor
    touch CUDA) itself, and a worker on the gpu queue of a machine without one would take jobs it
    cannot run."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            result = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=15)
        except (OSError, subprocess.SubprocessError):
            result = None
        if result is not None and result.returncode == 0 and "GPU" in result.stdout:
            return [Queue.CPU.value, Queue.GPU.value]
    return [Queue.CPU.value]


def display_url(host: str, port: int) -> str:
    """The address to show and probe: a wildcard bind is reachable on the loopback address."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def redact(url: str) -> str:
    """A Redis URL fit for logs: the password part is hidden."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


def run_up(
    host: str,
    port: int,
    data_dir: Path,
    queues: Sequence[str],
    stop: StopRequest,
) -> int:
    """The embedded stack: Redis (unless KD_REDIS_URL names one), one worker, the API."""
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["KD_DATA_DIR"] = str(data_dir)
    env.setdefault("PYTHONUNBUFFERED", "1")  # children's log lines show up as they happen
    children: list[Child] = []

    external = os.environ.get("KD_REDIS_URL")
    if external:
        log.info("using Redis at %s", redact(external))
        try:
            redis_server.wait_for_ping(external, timeout=30, alive=lambda: not stop.stopping)
        except redis_server.RedisError as exc:
            if stop.stopping:
                return 0
            log.error("KD_REDIS_URL=%s: %s", redact(external), exc)
            return 1
        redis_url = external
    else:
        try:
            executable = redis_server.find_redis_server()
        except redis_server.RedisError as exc:
            log.error("%s", exc)
            return 1
        directory = data_dir / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        # The port stays the same across restarts of Redis because the worker and the API were
        # given its URL when they started.
        redis_port = redis_server.free_port()
        redis_url = f"redis://{redis_server.LOOPBACK}:{redis_port}/0"

        def redis_ready(child: Child) -> None:
            try:
                redis_server.wait_for_ping(
                    redis_url,
                    timeout=20,
                    alive=lambda: child.running and not stop.stopping,
                    pid=child.proc.pid if child.proc else None,
                )
            except redis_server.RedisError as exc:
                tail = redis_server.log_tail(directory)
                raise redis_server.RedisError(f"{exc}; redis log:\n{tail}") from exc

        children.append(
            Child(
                "redis",
                redis_server.redis_argv(executable, redis_port, directory),
                env,
                layer=0,
                ready=redis_ready,
            )
        )
        log.info("embedded Redis on %s, data in %s", redis_url, directory)
    env["KD_REDIS_URL"] = redis_url

    cli = [sys.executable, "-m", "distillery"]
    # On one machine the worker trains on every core; at a lower CPU priority it leaves the API (and
    # Redis) the time they need to answer quickly, while still taking all the CPU nobody else wants.
    children.append(Child("worker", [*cli, "worker", "--queues", ",".join(queues)], env, layer=1,
                          nice=WORKER_NICE))
    children.append(Child("api", [*cli, "api", "--host", host, "--port", str(port)], env, layer=1))

    url = display_url(host, port)
    banner = (
        f"Distillery is up: {url}  (Swagger UI: {url}/docs)  "
        f"worker queues: {','.join(queues)}, data: {data_dir}. Ctrl-C stops it."
    )
    return Supervisor(children, stop, health_url=f"{url}/healthz", banner=banner).run()
