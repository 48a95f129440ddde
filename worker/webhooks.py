"""Job webhooks: delivering the outbox that terminal status changes fill (worker/lifecycle.py).

A job submitted with `notify: {url, secret}` gets one webhook when it ends. The status change writes the
job's outbox entry atomically (worker/store.py), whichever process made it (a worker, the API cancelling
a queued job, a worker's sweep failing a job whose teacher failed), so a notification is never lost to
a crash between the two. A `Deliverer` thread in every worker's main process (not in the pool processes
that train) takes due entries, POSTs the job record and records each attempt on the record
(`notifications`), since the job's event stream ends at its terminal status.

Each POST carries
    X-Distillery-Event: job.<status>        X-Distillery-Delivery: <job id>.<status> (same on retries)
    X-Distillery-Timestamp: <unix seconds>   X-Distillery-Signature: sha256=<hex>
where the signature is HMAC-SHA256 with the job's secret over `<timestamp>.<body>`: the receiver checks
it and the timestamp's age. Redirects are not followed (a 3xx is a failed delivery), 408, 429, 5xx and
network errors are retried with doubling waits, other answers are final.

Targets must match the operator's allow-list (KD_WEBHOOK_ALLOW_HOSTS: host names and IP networks), empty
by default: Redis and a keyless API listen on loopback, and a webhook must not become a way to reach them
or anything else inside the operator's network. A refused target is recorded on the job, never contacted.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from worker.config import WorkerSettings
from worker.store import JobStore, now_iso

log = logging.getLogger("distillery.webhooks")
POLL_S = 0.5  # how often the outbox is read: an ended job's webhook leaves within about this long
MAX_WAIT_S = 600.0  # the longest wait between two attempts
RETRY_STATUS = frozenset({408, 429})
# What a webhook says about a job: the record as the API shows it, less what only the service uses.
PUBLIC_FIELDS = ("id", "name", "status", "created_at", "started_at", "finished_at", "queue", "attempts", "spec",
                 "progress", "metrics", "error", "report", "notify")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class AllowList:
    """Host names (exact, case-insensitive; `.example.com` also allows its subdomains) and IP networks."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, text: str) -> AllowList:
        hosts, nets = set(), []
        for item in (t.strip() for t in text.split(",")):
            if not item:
                continue
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(nets))

    def refusal(self, url: str, resolve: bool = True) -> str | None:
        """Why `url` may not be called, or None when it may. A host name not on the list passes only when
        every address it resolves to lies in an allowed network."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower().rstrip(".")
        if parts.scheme not in ("http", "https") or not host:
            return "not an http(s) URL with a host"
        if not self.hosts and not self.networks:
            return "no webhook target is allowed (KD_WEBHOOK_ALLOW_HOSTS is empty)"
        try:
            addrs = [ipaddress.ip_address(host)]
        except ValueError:
            if host in self.hosts or any(h.startswith(".") and host.endswith(h) for h in self.hosts):
                return None
            if not resolve or not self.networks:
                return f"host {host} is not in KD_WEBHOOK_ALLOW_HOSTS"
            try:
                infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                           type=socket.SOCK_STREAM)
            except OSError as e:
                return f"host {host} does not resolve ({e})"
            addrs = [ipaddress.ip_address(info[4][0]) for info in infos]
        outside = [str(a) for a in addrs if not any(a in n for n in self.networks) and str(a) not in self.hosts]
        if outside:
            return f"{host} ({', '.join(outside)}) is not in KD_WEBHOOK_ALLOW_HOSTS"
        return None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Distillery-Signature value: HMAC-SHA256 over `<timestamp>.<body>` with the job's secret."""
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def public_record(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: rec.get(k) for k in PUBLIC_FIELDS}


def backoff_s(attempt: int, base_s: float) -> float:
    """Wait after failed attempt `attempt` (1-based): base, 2 x base, 4 x base, ... at most MAX_WAIT_S."""
    return min(MAX_WAIT_S, base_s * 2 ** (attempt - 1))


class Deliverer:
    """Sends due webhooks from the outbox; `run_once` is one pass, `run` loops until `stop` is set."""

    def __init__(self, store: JobStore, settings: WorkerSettings, stop: threading.Event | None = None):
        self.store, self.settings = store, settings
        self.allow = AllowList.parse(settings.webhook_allow_hosts)
        self.stop = stop or threading.Event()
        # no redirects (a 3xx could point anywhere, the allow-list checked only this URL); no proxy from
        # the environment (the allow-list is about where the request goes)
        self.http = httpx.Client(follow_redirects=False, trust_env=False,
                                 timeout=httpx.Timeout(settings.webhook_timeout_s))

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.run_once()
            except Exception as e:  # Redis restarting: try again at the next poll
                log.warning("webhooks: %s", e)
            self.stop.wait(POLL_S)
        self.http.close()

    def run_once(self) -> int:
        """Delivers what is due now; returns how many attempts were made (refusals included)."""
        done = 0
        for job_id in self.store.outbox_due(time.time()):
            # held past the POST's limit: another deliverer takes it over only if this one died
            if self.store.claim_outbox(job_id, time.time(), time.time() + self.settings.webhook_timeout_s * 2 + 30):
                self.deliver(job_id)
                done += 1
        return done

    def deliver(self, job_id: str) -> None:
        rec = self.store.get_job(job_id)
        target = self.store.notify_target(job_id)
        if rec is None or not target:
            self.store.outbox_done(job_id)
            return
        url, event = target["url"], f"job.{rec['status']}"
        attempt = 1 + sum(1 for a in rec["notifications"] if a.get("event") == event)
        row: dict[str, Any] = {"event": event, "url": url, "attempt": attempt, "at": now_iso()}
        refusal = self.allow.refusal(url)
        if refusal is not None:
            log.warning("job %s: webhook to %s refused: %s", job_id, url, refusal)
            self.store.add_notification(job_id, {**row, "outcome": "refused", "error": refusal})
            self.store.outbox_done(job_id)
            return
        body = json.dumps(public_record(rec), separators=(",", ":")).encode()
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": "distillery-webhook/1",
                   "X-Distillery-Event": event, "X-Distillery-Delivery": f"{job_id}.{rec['status']}",
                   "X-Distillery-Timestamp": ts, "X-Distillery-Signature": sign(target["secret"], ts, body)}
        t0 = time.monotonic()
        retry = True
        try:
            resp = self.http.post(url, content=body, headers=headers)
            row["status_code"] = resp.status_code
            ok = 200 <= resp.status_code < 300
            retry = resp.status_code >= 500 or resp.status_code in RETRY_STATUS
            if not ok and 300 <= resp.status_code < 400:
                row["error"] = "redirects are not followed"
        except httpx.HTTPError as e:
            ok, row["error"] = False, f"{type(e).__name__}: {e}"[:300]
        row["ms"] = round((time.monotonic() - t0) * 1000, 1)
        if ok:
            row["outcome"] = "delivered"
            self.store.add_notification(job_id, row)
            self.store.outbox_done(job_id)
        elif retry and attempt < self.settings.webhook_max_attempts:
            wait = backoff_s(attempt, self.settings.webhook_retry_base_s)
            row.update(outcome="retrying", retry_in_s=round(wait, 3))
            self.store.add_notification(job_id, row)
            self.store.outbox_retry_at(job_id, time.time() + wait)
        else:
            row["outcome"] = "gave_up"
            log.warning("job %s: webhook to %s failed for good: %s", job_id, url, row.get("error") or
                        row.get("status_code"))
            self.store.add_notification(job_id, row)
            self.store.outbox_done(job_id)


def start_deliverer(settings: WorkerSettings, stop: threading.Event) -> threading.Thread:
    """The deliverer thread of a worker's main process."""
    deliverer = Deliverer(JobStore.from_url(settings.redis), settings, stop)
    thread = threading.Thread(target=deliverer.run, daemon=True, name="kd-webhooks")
    thread.start()
    return thread
