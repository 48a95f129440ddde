"""The `distillery` command.

    distillery up       Redis + one worker + the API on one machine (the embedded default)
    distillery api      the HTTP API alone
    distillery worker   one Celery worker alone (more workers join a stack this way)
    distillery jobs ...       submit, list, follow, cancel jobs; reports; downloads (distillery/jobs_cli.py)
    distillery artifacts ...  upload teachers and datasets

The heavy imports (uvicorn, the API, Celery, torch) happen only in the process that needs them,
so that `distillery up` itself stays a small supervisor and never touches CUDA.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path

from worker.queues import QUEUES, Queue  # no Celery, no torch: the command stays light

CELERY_APP = "worker.celery_app:app"
ASGI_FACTORY = "api.main:create_app"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# uvicorn otherwise waits for open connections (an SSE event stream never ends by itself) for as
# long as they last before it exits.
API_GRACEFUL_SHUTDOWN_S = 5

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def _queue_list(text: str) -> list[str]:
    queues: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if not name:
            continue
        if name not in QUEUES:
            raise argparse.ArgumentTypeError(f"unknown queue {name!r}; the queues are {', '.join(QUEUES)}")
        if name not in queues:
            queues.append(name)
    if not queues:
        raise argparse.ArgumentTypeError("name at least one queue")
    return queues


def _device(text: str) -> str:
    if not _DEVICE.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N")
    return text


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is outside 1-65535")
    return port


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _add_bind_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on (default: %(default)s); any other than a loopback address "
        "needs API keys (KD_API_KEYS or KD_API_KEYS_FILE)",
    )
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help="TCP port (default: %(default)s)")


def _add_api_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-workers",
        type=_positive,
        default=os.environ.get("KD_API_WORKERS", "1"),  # a string default goes through `type` too
        help="API processes sharing the port (default: $KD_API_WORKERS, else 1); one process serves "
        "from one core, more spread a burst of requests over the cores",
    )


def _version() -> str:
    try:
        return metadata.version("distillery")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distillery", description="Knowledge distillation as a service (Distillery)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser(
        "up",
        help="run Redis, a worker and the API on this machine",
        description="Start a Redis (the one at KD_REDIS_URL, else an embedded redis-server with its "
        "data under the data dir), one worker and the API; restart any of them that dies; "
        "Ctrl-C stops all of them.",
    )
    _add_bind_options(up)
    up.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where Redis data, artifacts and datasets live (default: $KD_DATA_DIR, else ./data)",
    )
    up.add_argument(
        "--queues",
        type=_queue_list,
        default=None,
        help="queues of the worker, comma-separated (default: cpu, plus gpu when nvidia-smi lists a GPU)",
    )

    api = commands.add_parser("api", help="run the HTTP API alone", description="Serve the HTTP API.")
    _add_bind_options(api)
    _add_api_workers(api)

    worker = commands.add_parser(
        "worker",
        help="run one Celery worker",
        description="Run one Celery worker against KD_REDIS_URL. A worker on a GPU takes one job "
        "at a time (solo pool); start one worker per GPU.",
    )
    worker.add_argument(
        "--queues",
        type=_queue_list,
        default=None,
        help="queues to take jobs from, comma-separated: cpu, gpu (default: gpu with a cuda "
        "--device, else cpu)",
    )
    worker.add_argument(
        "--device", type=_device, default=None, help="cpu, cuda or cuda:N: the device this worker trains on"
    )
    worker.add_argument(
        "--pool",
        choices=("solo", "prefork", "threads"),
        default=None,
        help="Celery pool (default: solo for a GPU worker, else prefork); a cuda --device always "
        "uses solo",
    )
    worker.add_argument(
        "--concurrency", type=_positive, default=1, help="jobs at once, for prefork (default: %(default)s)"
    )
    worker.add_argument("--hostname", default=None, help="Celery node name (default: <queues>-<pid>@<host>)")
    worker.add_argument("--loglevel", default="INFO", help="Celery log level (default: %(default)s)")
    # Listed here for `distillery --help`; main() hands them to distillery/jobs_cli.py (typer) before
    # argparse sees them.
    commands.add_parser("jobs", add_help=False,
                        help="submit, list, show, follow, cancel jobs; report; download (see: distillery jobs --help)")
    commands.add_parser("artifacts", add_help=False,
                        help="upload a teacher checkpoint or a dataset (see: distillery artifacts --help)")
    return parser


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: assume it is reachable from outside
        return False


def bind_refusal(host: str, env: Mapping[str, str]) -> str | None:
    """Why the service must not listen on `host`, or None when it may: with no API keys the
    service is open to anyone, which is acceptable only on a loopback address."""
    if is_loopback(host) or env.get("KD_API_KEYS", "").strip() or env.get("KD_API_KEYS_FILE", "").strip():
        return None
    return (
        f"refusing to listen on {host} without API keys: anyone who can reach it could run jobs "
        "and read results. Set KD_API_KEYS (key:tenant pairs, comma-separated) or KD_API_KEYS_FILE, "
        f"or listen on a loopback address (--host {DEFAULT_HOST})."
    )


def _refuse(host: str) -> int | None:
    reason = bind_refusal(host, os.environ)
    if reason is None:
        return None
    print(f"distillery: error: {reason}", file=sys.stderr)
    return 2


def worker_command(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The Celery command line and environment for `distillery worker`."""
    device: str | None = args.device
    on_cuda = device is not None and device.startswith("cuda")
    queues: list[str] = args.queues or [Queue.GPU.value if on_cuda else Queue.CPU.value]
    pool: str = args.pool or ("solo" if on_cuda or Queue.GPU in queues else "prefork")
    if on_cuda and pool != "solo":
        # One job per GPU, and CUDA must not be initialised in a process that then forks.
        print(f"distillery: note: --device {device} runs the solo pool, not {pool}", file=sys.stderr)
        pool = "solo"
    # The pid keeps node names unique when several workers share a host (Celery warns otherwise);
    # Celery expands %h to the host name.
    hostname = args.hostname or f"{'-'.join(queues)}-{os.getpid()}@%h"
    argv = [
        sys.executable, "-m", "celery", "-A", CELERY_APP, "worker",
        "-Q", ",".join(queues),
        "--pool", pool,
        "--concurrency", str(args.concurrency),
        "--hostname", hostname,
        "--loglevel", args.loglevel,
    ]
    child_env = dict(env)
    if device is not None:
        # The worker picks its device from this; CUDA_VISIBLE_DEVICES is left alone so that
        # cuda:N means the same GPU as in nvidia-smi.
        child_env["KD_WORKER_DEVICE"] = device
    return argv, child_env


def _cmd_worker(args: argparse.Namespace) -> int:
    argv, env = worker_command(args, os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # Become the Celery worker (same pid): signals from a supervisor, Docker or systemd reach
        # Celery directly and its exit status is ours.
        os.execve(argv[0], argv, env)
    except OSError as exc:
        print(f"distillery: error: could not start the Celery worker: {exc}", file=sys.stderr)
        return 127
    return 0  # not reached: execve does not return


def _cmd_api(args: argparse.Namespace) -> int:
    refused = _refuse(args.host)
    if refused is not None:
        return refused
    import uvicorn

    uvicorn.run(
        ASGI_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.api_workers,
        timeout_graceful_shutdown=API_GRACEFUL_SHUTDOWN_S,
    )
    return 0


def port_taken(host: str, port: int) -> bool:
    """Whether something already listens on host:port (then the API would fail to start and be
    restarted forever; better to say so at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _cmd_up(args: argparse.Namespace) -> int:
    refused = _refuse(args.host)
    if refused is not None:
        return refused
    from distillery import supervisor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s distillery: %(message)s", datefmt="%H:%M:%S")
    if port_taken(args.host, args.port):
        print(
            f"distillery: error: {args.host}:{args.port} is already in use; pick another --port",
            file=sys.stderr,
        )
        return 1
    stop = supervisor.StopRequest()

    def on_signal(signum: int, frame: object) -> None:
        stop.request()

    # SIGHUP too: closing the terminal must stop the children, which run in their own sessions
    # and so would not get the hangup themselves.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    data_dir = args.data_dir or Path(os.environ.get("KD_DATA_DIR") or "data")
    queues = args.queues or supervisor.detect_queues()
    return supervisor.run_up(args.host, args.port, data_dir, queues, stop)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": _cmd_up,
    "api": _cmd_api,
    "worker": _cmd_worker,
}


# The client commands: typer + rich, through distillery.client; imported only when used, so `up`, `api`
# and `worker` start as before.
CLIENT_COMMANDS = ("jobs", "artifacts")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in CLIENT_COMMANDS:
        from distillery.jobs_cli import run

        return run(argv)
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command](args)
