"""Load: a burst of small jobs while many clients poll status and follow event streams.

    .venv/bin/python benchmarks/load.py                 # starts `distillery up` on a free port, stops it after
    .venv/bin/python benchmarks/load.py --url http://127.0.0.1:8000 [--key KEY]

It submits --jobs tiny jobs (digits, mlp 16, one epoch: each really runs through the worker) as fast
as --submitters concurrent connections allow, while --clients clients run: half poll job status
(GET /v1/jobs/{id}) in a loop, half follow one job's server-sent event stream to its end, then the
next job's. When every job has ended it reads each job's events and checks that the job reached a
final state exactly once: one `running` and one final status event, one delivery (attempts == 1).
It prints p50/p99 latency of submit and status, error counts, and the verdict; it exits 1 when a goal
is missed (any error, a lost or duplicated job, status p99 >= 100 ms).

Submitters, pollers and followers are three client processes, as the users they stand for are
separate programs: in one Python process, the submit burst keeps that process's event loop so busy
that a poll waits there for hundreds of milliseconds before its request is even written, and the
script would report its own congestion as the service's latency. Each process also measures how late
its event loop wakes up (`client_loop_lag_ms`), and the API's own time per status request is read
from its Server-Timing header (`status_server_ms`), so the numbers say where time went.

Only loopback addresses: the script refuses any other --url.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
FINAL = {"succeeded", "failed", "cancelled"}
SPEC = {"name": "load", "student": {"architecture": "mlp", "kwargs": {"hidden": [16]}}, "dataset": {"name": "digits"},
        "distillation": {"method": "none"}, "training": {"epochs": 1, "batch_size": 256, "lr": 0.1},
        "resources": {"device": "cpu"}}
STATUS_P99_GOAL_MS = 100.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": round(pct(values, 50), 1), "p99": round(pct(values, 99), 1),
            "max": round(max(values, default=0), 1)}


def server_ms(r: aiohttp.ClientResponse) -> float | None:
    """The API's own time for a request (its Server-Timing header)."""
    for part in r.headers.get("server-timing", "").split(","):
        name, _, dur = part.strip().partition(";dur=")
        if name == "app" and dur:
            return float(dur)
    return None


def client(base: str, headers: dict[str, str], connections: int) -> aiohttp.ClientSession:
    """The measuring clients use aiohttp: it spends a fraction of httpx's CPU per request, and on a 2-core
    machine shared with the service every millisecond the clients burn is taken from the API."""
    return aiohttp.ClientSession(base_url=base, headers=headers, connector=aiohttp.TCPConnector(limit=connections),
                                 timeout=aiohttp.ClientTimeout(total=None, connect=60, sock_read=90))


CLIENT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


class Role:
    """One client process: submitters, pollers or followers. Job ids arrive on `ids` as the submitter
    gets them accepted; `done` ends the run; the measurements go back on `results`."""

    def __init__(self, base: str, headers: dict[str, str], ids: Any, done: Any):
        self.base, self.headers, self.ids_in, self.done_ev = base, headers, ids, done
        self.job_ids: list[str] = []
        self.errors: Counter[str] = Counter()
        self.lag_ms: list[float] = []

    async def take_ids(self) -> None:
        while not self.done_ev.is_set():
            try:
                while True:
                    self.job_ids.append(self.ids_in.get_nowait())
            except queue.Empty:
                pass
            await asyncio.sleep(0.05)

    async def run_clients(self, n: int, seed: int,
                          one: Callable[[aiohttp.ClientSession, random.Random], Awaitable[None]]) -> None:
        """n clients of one kind on one connection pool, each with its own random stream, until `done`."""
        rng = random.Random(seed)
        async with client(self.base, self.headers, n) as http:
            await asyncio.gather(self.take_ids(), self.loop_lag(),
                                 *(one(http, random.Random(rng.random())) for _ in range(n)))

    async def loop_lag(self) -> None:
        """How late this process's event loop wakes up: a latency measured here includes that delay."""
        while not self.done_ev.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.02)
            self.lag_ms.append((time.perf_counter() - t0 - 0.02) * 1000)


class Pollers(Role):
    def __init__(self, *a: Any):
        super().__init__(*a)
        self.status: list[tuple[float, float, float | None]] = []  # (wall time, ms, server ms)

    async def poller(self, http: aiohttp.ClientSession, rng: random.Random) -> None:
        while not self.done_ev.is_set():
            if not self.job_ids:
                await asyncio.sleep(0.05)
                continue
            job_id = rng.choice(self.job_ids)
            t0 = time.perf_counter()
            try:
                async with http.get(f"/v1/jobs/{job_id}") as r:
                    await r.read()
            except CLIENT_ERRORS as e:
                self.errors[f"status {type(e).__name__}"] += 1
                await asyncio.sleep(0.2)
                continue
            self.status.append((time.time(), (time.perf_counter() - t0) * 1000, server_ms(r)))
            if r.status != 200:
                self.errors[f"status {r.status}"] += 1
            await asyncio.sleep(rng.uniform(0.1, 0.3))

    async def run(self, n: int, seed: int) -> dict[str, Any]:
        await self.run_clients(n, seed, self.poller)
        return {"status": self.status, "errors": self.errors, "lag_ms": self.lag_ms}


class Followers(Role):
    def __init__(self, *a: Any):
        super().__init__(*a)
        self.final: set[str] = set()
        self.streams = 0
        self.events = 0

    async def follower(self, http: aiohttp.ClientSession, rng: random.Random) -> None:
        while not self.done_ev.is_set():
            open_jobs = [j for j in self.job_ids if j not in self.final]
            if not open_jobs:
                await asyncio.sleep(0.1)
                continue
            job_id = rng.choice(open_jobs)
            try:
                async with http.get(f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"}) as r:
                    if r.status != 200:
                        self.errors[f"events {r.status}"] += 1
                        continue
                    self.streams += 1
                    event = None
                    async for raw in r.content:
                        line = raw.decode().rstrip("\r\n")
                        if line.startswith("event: "):
                            event = line[7:]
                            self.events += 1
                        elif line.startswith("data: ") and event == "end":
                            if json.loads(line[6:])["status"] in FINAL:
                                self.final.add(job_id)
                            break
                        if self.done_ev.is_set():
                            break
            except CLIENT_ERRORS as e:
                self.errors[f"events {type(e).__name__}"] += 1
                await asyncio.sleep(0.2)

    async def run(self, n: int, seed: int) -> dict[str, Any]:
        await self.run_clients(n, seed, self.follower)
        return {"streams": self.streams, "events": self.events, "errors": self.errors, "lag_ms": self.lag_ms}


class Submitters(Role):
    def __init__(self, base: str, headers: dict[str, str], outs: list[Any], done: Any):
        super().__init__(base, headers, None, done)
        self.outs = outs
        self.submit_ms: list[float] = []
        self.accepted: list[str] = []

    async def run(self, n_jobs: int, n_submitters: int) -> dict[str, Any]:
        todo = iter(range(n_jobs))
        lag = asyncio.create_task(self.loop_lag())
        async with client(self.base, self.headers, n_submitters) as http:
            async def one_submitter() -> None:
                for i in todo:
                    t0 = time.perf_counter()
                    try:
                        async with http.post("/v1/jobs", json={**SPEC, "name": f"load-{i}"}) as r:
                            body = await r.json(content_type=None)
                    except CLIENT_ERRORS as e:
                        self.errors[f"submit {type(e).__name__}"] += 1
                        continue
                    self.submit_ms.append((time.perf_counter() - t0) * 1000)
                    if r.status != 202:
                        self.errors[f"submit {r.status}"] += 1
                        continue
                    self.accepted.append(body["id"])
                    for out in self.outs:
                        out.put(body["id"])

            start = time.time()
            await asyncio.gather(*(one_submitter() for _ in range(n_submitters)))
            end = time.time()
        lag.cancel()
        return {"submit_ms": self.submit_ms, "errors": self.errors, "lag_ms": self.lag_ms,
                "burst": (start, end), "ids": self.accepted}


def role_main(role: str, base: str, headers: dict[str, str], channel: Any, done: Any, results: Any,
              n: int, extra: int) -> None:
    """Entry point of a client process (spawned: a fresh interpreter, nothing shared but the queues)."""
    if role == "submit":
        out = asyncio.run(Submitters(base, headers, channel, done).run(n, extra))
    elif role == "poll":
        out = asyncio.run(Pollers(base, headers, channel, done).run(n, extra))
    else:
        out = asyncio.run(Followers(base, headers, channel, done).run(n, extra))
    results.put((role, out))


def wait_until_all_final(base: str, headers: dict[str, str], job_ids: list[str], timeout_s: float) -> None:
    """The parent's watch: checks, by reading each open job, that all accepted jobs have ended (not relying
    on the clients' samples)."""
    final: set[str] = set()
    t0 = time.time()
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        while time.time() - t0 < timeout_s:
            time.sleep(2)
            for job_id in [j for j in job_ids if j not in final][:50]:
                try:
                    r = http.get(f"/v1/jobs/{job_id}")
                    if r.status_code == 200 and r.json()["status"] in FINAL:
                        final.add(job_id)
                except httpx.HTTPError:
                    pass
            if len(final) == len(job_ids):
                break


async def audit(base: str, headers: dict[str, str], job_ids: list[str]) -> dict[str, Any]:
    """Each job, from its own events: one start, one final status, one delivery."""
    problems: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=20)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as http:
        sem = asyncio.Semaphore(20)

        async def one(job_id: str) -> None:
            async with sem:
                job = (await http.get(f"/v1/jobs/{job_id}")).json()
                events = (await http.get(f"/v1/jobs/{job_id}/events", params={"limit": 10000})).json()["data"]
            statuses[job["status"]] += 1
            seen = Counter(e["data"].get("status") for e in events if e["type"] == "status")
            if job["status"] not in FINAL:
                problems["not final (lost)"] += 1
            if sum(seen[s] for s in FINAL) != 1:
                problems["final status events != 1"] += 1
            if seen["running"] != 1:
                problems["running events != 1 (ran twice or never)"] += 1
            if job["attempts"] != 1:
                problems["attempts != 1"] += 1

        await asyncio.gather(*(one(j) for j in job_ids))
    return {"statuses": dict(statuses), "problems": dict(problems)}


def plot_status(status: list[tuple[float, float, float | None]], start: float, end: float, path: Path) -> None:
    """Status latency over the run, as the clients saw it and as the API spent it, the burst shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min([start, *(t for t, _, _ in status)])
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.axvspan(start - t0, end - t0, color="tab:orange", alpha=0.15, label="submit burst")
    ax.scatter([t - t0 for t, _, _ in status], [ms for _, ms, _ in status], s=2, label="client round trip")
    ax.scatter([t - t0 for t, _, sv in status if sv is not None], [sv for _, _, sv in status if sv is not None],
               s=2, color="tab:green", label="API time (Server-Timing)")
    ax.axhline(STATUS_P99_GOAL_MS, color="tab:red", lw=1, ls="--", label="p99 goal")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the first request")
    ax.set_ylabel("GET /v1/jobs/{id} (ms)")
    ax.legend(loc="upper right", markerscale=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_load(base: str, headers: dict[str, str], n_jobs: int, n_clients: int, n_submitters: int,
             timeout_s: float, plot: Path | None = None) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    done = ctx.Event()
    results = ctx.Queue()
    to_pollers, to_followers = ctx.Queue(), ctx.Queue()
    n_pollers = n_clients // 2
    procs = {
        "poll": ctx.Process(target=role_main, args=("poll", base, headers, to_pollers, done, results, n_pollers, 1)),
        "follow": ctx.Process(target=role_main, args=("follow", base, headers, to_followers, done, results,
                                                      n_clients - n_pollers, 2)),
        "submit": ctx.Process(target=role_main, args=("submit", base, headers, [to_pollers, to_followers],
                                                      done, results, n_jobs, n_submitters)),
    }
    t0 = time.perf_counter()
    for p in procs.values():
        p.start()
    out: dict[str, Any] = {}
    job_ids: list[str] = []
    try:
        while "submit" not in out:  # the submitters end first; the others run until `done`
            role, res = results.get(timeout=timeout_s)
            out[role] = res
        job_ids = out["submit"]["ids"]
        wait_until_all_final(base, headers, job_ids, timeout_s)
    finally:
        done.set()
        while len(out) < len(procs):
            try:
                role, res = results.get(timeout=120)
                out[role] = res
            except queue.Empty:
                break
        for p in procs.values():
            p.join(10)
            if p.is_alive():
                p.kill()
    wall = time.perf_counter() - t0
    if set(out) != set(procs):
        raise SystemExit(f"client processes {sorted(set(procs) - set(out))} did not report")
    checked = asyncio.run(audit(base, headers, job_ids))
    lost = n_jobs - len(job_ids) + checked["problems"].get("not final (lost)", 0)
    dup = sum(v for k, v in checked["problems"].items() if "not final" not in k)
    start, end = out["submit"]["burst"]
    status = out["poll"]["status"]
    if plot is not None:
        plot_status(status, start, end, plot)
    errors = out["submit"]["errors"] + out["poll"]["errors"] + out["follow"]["errors"]
    return {
        "jobs": n_jobs, "accepted": len(job_ids), "clients": n_clients,
        "submit_burst_s": round(end - start, 2), "wall_s": round(wall, 1),
        "submit_ms": summary(out["submit"]["submit_ms"]),
        "status_ms": summary([ms for _, ms, _ in status]),
        "status_ms_during_burst": summary([ms for t, ms, _ in status if start <= t <= end]),
        "status_server_ms": summary([s for _, _, s in status if s is not None]),
        "client_loop_lag_ms": {role: summary(out[role]["lag_ms"]) for role in procs},
        "sse": {"streams": out["follow"]["streams"], "events": out["follow"]["events"]},
        "errors": dict(errors), "final_statuses": checked["statuses"], "audit_problems": checked["problems"],
        "lost": lost, "duplicated_or_inconsistent": dup,
    }


def start_stack(data_dir: Path) -> tuple[subprocess.Popen, str]:
    from distillery.redis_server import free_port

    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for k in ("KD_API_KEYS", "KD_API_KEYS_FILE", "KD_REDIS_URL"):
        env.pop(k, None)
    log = open(data_dir / "up.log", "w")  # noqa: SIM115 - lives as long as the stack
    proc = subprocess.Popen([sys.executable, "-m", "distillery", "up", "--port", str(port), "--data-dir",
                             str(data_dir), "--queues", "cpu"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < 180:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"the stack did not get ready; see {data_dir / 'up.log'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running service (loopback only); default: start `distillery up` here")
    ap.add_argument("--key", help="API key (Authorization: Bearer) for --url")
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--submitters", type=int, default=50, help="concurrent submit connections")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for every job to end")
    ap.add_argument("--out", type=Path, help="write the results as JSON here too")
    ap.add_argument("--plot", type=Path, help="draw status latency over time (PNG) here")
    args = ap.parse_args()
    proc = None
    if args.url:
        host = urlparse(args.url).hostname or ""
        if host not in ("localhost", "::1") and not host.startswith("127."):
            raise SystemExit("--url must be a loopback address")
        base = args.url.rstrip("/")
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="distillery-load-"))
        print(f"starting `distillery up` in {data_dir} ...", flush=True)
        proc, base = start_stack(data_dir)
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    try:
        result = run_load(base, headers, args.jobs, args.clients, args.submitters, args.timeout, args.plot)
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    goals = {"zero errors": not result["errors"], "none lost": result["lost"] == 0,
             "none duplicated": result["duplicated_or_inconsistent"] == 0,
             f"status p99 < {STATUS_P99_GOAL_MS:.0f} ms": result["status_ms"]["p99"] < STATUS_P99_GOAL_MS}
    result["goals"] = goals
    print(json.dumps(result, indent=2))
    print("PASS" if all(goals.values()) else "FAIL: " + ", ".join(k for k, v in goals.items() if not v))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
