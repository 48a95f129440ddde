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

Only loopback addresses: the script refuses any other --url.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

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


class Load:
    def __init__(self, base: str, headers: dict[str, str], jobs: int, clients: int, submitters: int,
                 timeout_s: float):
        self.base, self.headers = base, headers
        self.n_jobs, self.n_clients, self.n_submitters, self.timeout_s = jobs, clients, submitters, timeout_s
        self.job_ids: list[str] = []
        self.submit_ms: list[float] = []
        self.status_ms: list[float] = []
        self.errors: Counter[str] = Counter()
        self.final: dict[str, str] = {}
        self.sse_streams = 0
        self.sse_events = 0
        self.done = asyncio.Event()

    def client(self, connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(base_url=self.base, headers=self.headers, timeout=httpx.Timeout(60, read=90),
                                 limits=limits)

    async def submit_all(self) -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(self.n_jobs):
            queue.put_nowait(i)
        async with self.client(self.n_submitters) as http:
            async def one_submitter() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    t0 = time.perf_counter()
                    try:
                        r = await http.post("/v1/jobs", json={**SPEC, "name": f"load-{i}"})
                    except httpx.HTTPError as e:
                        self.errors[f"submit {type(e).__name__}"] += 1
                        continue
                    self.submit_ms.append((time.perf_counter() - t0) * 1000)
                    if r.status_code != 202:
                        self.errors[f"submit {r.status_code}"] += 1
                    else:
                        self.job_ids.append(r.json()["id"])

            await asyncio.gather(*(one_submitter() for _ in range(self.n_submitters)))

    async def poller(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        while not self.done.is_set():
            if not self.job_ids:
                await asyncio.sleep(0.05)
                continue
            job_id = rng.choice(self.job_ids)
            t0 = time.perf_counter()
            try:
                r = await http.get(f"/v1/jobs/{job_id}")
            except httpx.HTTPError as e:
                self.errors[f"status {type(e).__name__}"] += 1
                await asyncio.sleep(0.2)
                continue
            self.status_ms.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                self.errors[f"status {r.status_code}"] += 1
            elif r.json()["status"] in FINAL:
                self.final[job_id] = r.json()["status"]
            await asyncio.sleep(rng.uniform(0.1, 0.3))

    async def follower(self, http: httpx.AsyncClient, rng: random.Random) -> None:
        while not self.done.is_set():
            open_jobs = [j for j in self.job_ids if j not in self.final]
            if not open_jobs:
                await asyncio.sleep(0.1)
                continue
            job_id = rng.choice(open_jobs)
            try:
                async with http.stream("GET", f"/v1/jobs/{job_id}/events",
                                       headers={"Accept": "text/event-stream"}) as r:
                    if r.status_code != 200:
                        self.errors[f"events {r.status_code}"] += 1
                        continue
                    self.sse_streams += 1
                    event = None
                    async for line in r.aiter_lines():
                        if line.startswith("event: "):
                            event = line[7:]
                            self.sse_events += 1
                        elif line.startswith("data: ") and event == "end":
                            status = json.loads(line[6:])["status"]
                            if status in FINAL:
                                self.final[job_id] = status
                            break
                        if self.done.is_set():
                            break
            except httpx.HTTPError as e:
                self.errors[f"events {type(e).__name__}"] += 1
                await asyncio.sleep(0.2)

    async def watch_for_the_end(self) -> None:
        """Ends the run when every submitted job has a final status (checked by listing, not only by the
        clients' samples), or at the timeout."""
        t0 = time.time()
        async with self.client(2) as http:
            while time.time() - t0 < self.timeout_s:
                await asyncio.sleep(2)
                if len(self.job_ids) + sum(v for k, v in self.errors.items() if k.startswith("submit")) < self.n_jobs:
                    continue
                pending = [j for j in self.job_ids if j not in self.final]
                for job_id in pending[:50]:
                    try:
                        r = await http.get(f"/v1/jobs/{job_id}")
                        if r.status_code == 200 and r.json()["status"] in FINAL:
                            self.final[job_id] = r.json()["status"]
                    except httpx.HTTPError:
                        pass
                if all(j in self.final for j in self.job_ids):
                    break
        self.done.set()

    async def audit(self) -> dict[str, object]:
        """Each job, from its own events: one start, one final status, one delivery."""
        problems: Counter[str] = Counter()
        statuses: Counter[str] = Counter()
        async with self.client(20) as http:
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

            await asyncio.gather(*(one(j) for j in self.job_ids))
        return {"statuses": dict(statuses), "problems": dict(problems)}

    async def run(self) -> dict[str, object]:
        rng = random.Random(0)
        n_pollers = self.n_clients // 2
        t0 = time.perf_counter()
        async with self.client(self.n_clients) as http:
            clients = [asyncio.create_task(self.poller(http, random.Random(rng.random()))) for _ in range(n_pollers)]
            clients += [asyncio.create_task(self.follower(http, random.Random(rng.random())))
                        for _ in range(self.n_clients - n_pollers)]
            watcher = asyncio.create_task(self.watch_for_the_end())
            ts = time.perf_counter()
            await self.submit_all()
            submit_s = time.perf_counter() - ts
            await watcher
            await asyncio.gather(*clients)
        wall = time.perf_counter() - t0
        audit = await self.audit()
        lost = self.n_jobs - len(self.job_ids) + audit["problems"].get("not final (lost)", 0)  # type: ignore[union-attr]
        dup = sum(v for k, v in audit["problems"].items() if "not final" not in k)  # type: ignore[union-attr]
        return {
            "jobs": self.n_jobs, "accepted": len(self.job_ids), "clients": self.n_clients,
            "submit_burst_s": round(submit_s, 2), "wall_s": round(wall, 1),
            "submit_ms": {"n": len(self.submit_ms), "p50": round(pct(self.submit_ms, 50), 1),
                          "p99": round(pct(self.submit_ms, 99), 1), "max": round(max(self.submit_ms, default=0), 1)},
            "status_ms": {"n": len(self.status_ms), "p50": round(pct(self.status_ms, 50), 1),
                          "p99": round(pct(self.status_ms, 99), 1), "max": round(max(self.status_ms, default=0), 1)},
            "sse": {"streams": self.sse_streams, "events": self.sse_events},
            "errors": dict(self.errors), "final_statuses": audit["statuses"], "audit_problems": audit["problems"],
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
        load = Load(base, headers, args.jobs, args.clients, args.submitters, args.timeout)
        result = asyncio.run(load.run())
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    goals = {"zero errors": not result["errors"], "none lost": result["lost"] == 0,
             "none duplicated": result["duplicated_or_inconsistent"] == 0,
             f"status p99 < {STATUS_P99_GOAL_MS:.0f} ms": result["status_ms"]["p99"] < STATUS_P99_GOAL_MS}  # type: ignore[index]
    result["goals"] = goals
    print(json.dumps(result, indent=2))
    print("PASS" if all(goals.values()) else "FAIL: " + ", ".join(k for k, v in goals.items() if not v))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
