"""Webhooks through the whole service: a job's webhook leaves the real worker signed, is retried after a
500 and recorded on the job; a queued job cancelled through the API notifies too, and a target off the
operator's allow-list (the `service` stack allows 127.0.0.1 only) is refused and recorded."""
from __future__ import annotations

import hashlib
import hmac
import json

from tests.harness import Stack, wait_for
from tests.helpers import TINY_SPEC, Receiver

SECRET = "e2e-webhook-secret-0123"


def test_a_finished_job_notifies_signed_after_a_retry(service: Stack) -> None:
    receiver = Receiver([500])
    try:
        job_id = service.submit({**TINY_SPEC, "notify": {"url": receiver.url, "secret": SECRET}})
        job = service.wait(job_id)
        assert job["status"] == "succeeded", job["error"]
        rec = wait_for("the webhook delivered", lambda: (j := service.job(job_id))["notifications"]
                       and j["notifications"][-1]["outcome"] == "delivered" and j, timeout=30)
        assert [(a["attempt"], a["outcome"], a["status_code"]) for a in rec["notifications"]] == \
            [(1, "retrying", 500), (2, "delivered", 200)]
        assert rec["notify"] == {"url": receiver.url} and SECRET not in json.dumps(rec)
        assert len(receiver.got) == 2
        headers, body = receiver.got[-1]
        ts = headers["X-Distillery-Timestamp"]
        mac = hmac.new(SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Distillery-Signature"], f"sha256={mac}")
        sent = json.loads(body)
        assert sent["id"] == job_id and sent["status"] == "succeeded" and sent["report"]["student"]["top1"] > 0
        assert headers["X-Distillery-Delivery"] == f"{job_id}.succeeded"
    finally:
        receiver.close()


def test_a_cancelled_queued_job_to_a_target_off_the_allow_list_is_refused(service: Stack) -> None:
    # device cuda: the stack has no GPU worker, so the job stays queued until the API cancels it
    spec = {**TINY_SPEC, "resources": {"device": "cuda"},
            "notify": {"url": "http://10.255.255.1:8080/hook", "secret": SECRET}}
    job_id = service.submit(spec)
    with service.client() as http:
        assert http.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "cancelled"
    rec = wait_for("the refusal recorded", lambda: (j := service.job(job_id))["notifications"] and j, timeout=30)
    (row,) = rec["notifications"]
    assert row["event"] == "job.cancelled" and row["outcome"] == "refused"
    assert "10.255.255.1" in row["error"] and "KD_WEBHOOK_ALLOW_HOSTS" in row["error"]
