"""`GET /metrics`: the service's numbers in the Prometheus text format, for operators (docs/operations.md).

The numbers about jobs and workers live in Redis, where every API process and worker writes them (the
per-status counts kept by each status change, the run-time histogram of ended jobs, the broker's queue
lists, the workers' heartbeats), so any API process answers for the whole service; they are read at
scrape time by a collector. The request-latency histogram is this API process's own (time to the
response's headers, by route template): with several API processes, scrape each.

With `KD_METRICS_KEY` set, a scrape must send `Authorization: Bearer <that key>` (tenants' API keys do
not open it: the numbers span all tenants); unset, /metrics is open like /healthz and /readyz.
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import Problem
from worker.lifecycle import Status
from worker.queues import QUEUES
from worker.store import DURATION_BUCKETS, JobStore

router = APIRouter(tags=["operations"])
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceCollector(Collector):
    """Reads the service's state from Redis at each scrape."""

    def __init__(self, store: JobStore):
        self.store = store

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("distillery_jobs", "Jobs in each status, by queue", labels=["status", "queue"])
        counts = self.store.job_counts()
        for status in Status:  # every status appears, 0 when none: a dashboard's series never vanish
            for queue in sorted({*QUEUES, *(q for _, q in counts)}):
                jobs.add_metric([status.value, queue], max(0, counts.get((status.value, queue), 0)))
        yield jobs
        depth = GaugeMetricFamily("distillery_queue_depth", "Messages waiting in the broker's queue (jobs sent "
                                  "and not yet taken by a worker)", labels=["queue"])
        for queue in QUEUES:
            depth.add_metric([queue], self.store.broker_depth(queue))
        yield depth
        hist = HistogramMetricFamily("distillery_job_duration_seconds", "Run time (started to ended) of ended "
                                     "jobs, by final status", labels=["status"])
        for status, row in sorted(self.store.durations().items()):
            cumulative, buckets = 0.0, []
            for bound in [*(str(b) for b in DURATION_BUCKETS), "+Inf"]:
                cumulative += row.get(bound, 0.0)
                buckets.append((bound, cumulative))
            hist.add_metric([status], buckets, sum_value=row.get("sum", 0.0))
        yield hist
        live, stale = self.store.live_workers(), self.store.stale_workers()
        up = GaugeMetricFamily("distillery_worker_up", "1 for a worker whose heartbeat is current, 0 for one "
                               "that stopped sending them (dead, frozen or not consuming)", labels=["worker"])
        age = GaugeMetricFamily("distillery_worker_heartbeat_age_seconds", "Seconds since the worker's last "
                                "heartbeat", labels=["worker"])
        busy = GaugeMetricFamily("distillery_worker_busy", "1 while a one-job-at-a-time (solo pool) worker "
                                 "trains, its heartbeat then sent by the job", labels=["worker"])
        for name, info in sorted(live.items()):
            up.add_metric([name], 1)
            busy.add_metric([name], 1 if info.get("busy") else 0)
        for name, seconds in sorted(stale.items()):
            up.add_metric([name], 0)
            age.add_metric([name], seconds)
        seen = self.store.worker_last_seen()
        for name in sorted(live):
            if name in seen:
                age.add_metric([name], round(max(0.0, time.time() - seen[name]), 3))
        yield from (up, age, busy)
        outbox = GaugeMetricFamily("distillery_webhooks_pending", "Job webhooks waiting to be delivered or retried")
        outbox.add_metric([], self.store.outbox_size())
        yield outbox


def request_latency(registry: CollectorRegistry) -> Histogram:
    return Histogram("distillery_api_request_duration_seconds", "API time to the response's headers, by route",
                     ["method", "route", "status"], buckets=LATENCY_BUCKETS, registry=registry)


class RequestLatency:
    """ASGI middleware observing each HTTP request's time to its response headers (an event stream's
    headers leave at once; its length is not a latency). Labelled by route template, never by raw path,
    so job ids do not multiply the series."""

    def __init__(self, app: ASGIApp, histogram: Histogram):
        self.app, self.histogram = app, histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = getattr(scope.get("route"), "path", None) or "unmatched"
                self.histogram.labels(scope["method"], route, str(message["status"])).observe(
                    time.perf_counter() - t0)
            await send(message)

        await self.app(scope, receive, send_observed)


def install(app: object, store: JobStore) -> CollectorRegistry:
    """A registry of this app's own (tests make several apps in one process) with the service's collector
    and the latency histogram, whose middleware is added outermost so that it times everything."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(store))
    app.add_middleware(RequestLatency, histogram=request_latency(registry))  # type: ignore[attr-defined]
    app.state.metrics = registry  # type: ignore[attr-defined]
    return registry


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    key = request.app.state.settings.metrics_key
    if key:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), key.encode()):
            raise Problem(401, "send `Authorization: Bearer <KD_METRICS_KEY>`", headers={"WWW-Authenticate": "Bearer"})
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
