"""/metrics of the running service, parsed by prometheus_client's parser, against what the API says about
the same jobs: a job run by the real worker, one held in the GPU queue (the stack has no GPU worker)."""
from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Stack, wait_for
from tests.helpers import TINY_SPEC


def _jobs(service: Stack) -> list[dict[str, Any]]:
    out, cursor = [], None
    with service.client() as http:
        while True:
            page = http.get("/v1/jobs", params={"limit": 200, **({"cursor": cursor} if cursor else {})}).json()
            out += page["data"]
            if not (cursor := page["next_cursor"]):
                return out


def _scrape(service: Stack) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = httpx.get(f"{service.base}/metrics", timeout=30).text
    got: dict[str, list[tuple[dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            got.setdefault(s.name, []).append((s.labels, s.value))
    return got


def test_metrics_match_the_jobs(service: Stack) -> None:
    done = service.wait(service.submit(TINY_SPEC))
    assert done["status"] == "succeeded", done["error"]
    service.submit({**TINY_SPEC, "resources": {"device": "cuda"}})  # waits in the gpu queue

    def consistent() -> tuple[dict, Counter] | None:  # jobs of earlier tests may still be ending
        before = Counter((j["status"], j["queue"]) for j in _jobs(service))
        got = _scrape(service)
        after = Counter((j["status"], j["queue"]) for j in _jobs(service))
        counted = Counter({(lab["status"], lab["queue"]): int(v) for lab, v in got["distillery_jobs"] if v})
        return (got, after) if before == after == counted else None

    got, jobs = wait_for("/metrics to agree with the job list", consistent, timeout=60, every=0.5)
    assert jobs[("succeeded", "cpu")] >= 1 and jobs[("queued", "gpu")] >= 1
    depth = {lab["queue"]: v for lab, v in got["distillery_queue_depth"]}
    assert depth["gpu"] == sum(n for (_, q), n in jobs.items() if q == "gpu")  # no worker takes from gpu
    hist_count = {lab["status"]: v for lab, v in got["distillery_job_duration_seconds_count"]}
    assert hist_count["succeeded"] == sum(n for (s, _), n in jobs.items() if s == "succeeded")
    buckets = [v for lab, v in got["distillery_job_duration_seconds_bucket"] if lab["status"] == "succeeded"]
    assert buckets == sorted(buckets) and buckets[-1] == hist_count["succeeded"]  # cumulative, +Inf last
    total = {lab["status"]: v for lab, v in got["distillery_job_duration_seconds_sum"]}["succeeded"]
    assert total >= done["report"]["wall_seconds"] - 0.01  # started..finished holds the training run
    up = {lab["worker"]: v for lab, v in got["distillery_worker_up"]}
    assert up.get(service.hostname("e2e")) == 1
    latency = {(lab["method"], lab["route"]): v for lab, v in got["distillery_api_request_duration_seconds_count"]}
    assert latency[("POST", "/v1/jobs")] >= 2 and latency[("GET", "/v1/jobs/{job_id}")] >= 1
