"""/metrics on the real app factory with a real Redis: Prometheus text that prometheus_client's own parser
reads, counts that follow the lifecycle, and KD_METRICS_KEY protection."""
from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from api.settings import Settings
from tests.helpers import TINY_SPEC


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_follow_the_jobs_and_honour_the_key(redis_url: str, redis_client, tmp_path: Path) -> None:
    app = create_app(Settings(redis_url=redis_url, data_dir=tmp_path, metrics_key="scrape-key"))
    with TestClient(app) as http:
        r = http.get("/metrics")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert http.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        ids = [http.post("/v1/jobs", json=TINY_SPEC).json()["id"] for _ in range(3)]
        assert http.post(f"/v1/jobs/{ids[0]}/cancel").json()["status"] == "cancelled"
        http.get(f"/v1/jobs/{ids[1]}")
        r = http.get("/metrics", headers={"Authorization": "Bearer scrape-key"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        got = samples(r.text)
    assert got[("distillery_jobs", (("queue", "cpu"), ("status", "queued")))] == 2
    assert got[("distillery_jobs", (("queue", "cpu"), ("status", "cancelled")))] == 1
    assert got[("distillery_jobs", (("queue", "gpu"), ("status", "running")))] == 0
    assert got[("distillery_queue_depth", (("queue", "cpu"),))] == 3  # no worker took the messages
    assert got[("distillery_webhooks_pending", ())] == 0
    latency = ("distillery_api_request_duration_seconds_count",
               (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200")))
    assert got[latency] == 1  # by route template, not by job id
