"""Job specs and small payloads shared by test modules (test modules never import each other)."""
from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np

TEACHER_HIDDEN = [256, 256]
# the smallest real job: digits, an mlp of 32, one epoch (what API tests submit; no worker needs to run it)
TINY_SPEC: dict[str, Any] = {"student": {"architecture": "mlp", "kwargs": {"hidden": [32]}},
                             "dataset": {"name": "digits"}, "distillation": {"method": "none"},
                             "training": {"epochs": 1}, "resources": {"device": "cpu"}}


def spec(**over: Any) -> dict[str, Any]:
    """A digits job trained on labels alone (method none) by an mlp teacher-sized net; keys replaced by `over`."""
    s: dict[str, Any] = {
        "student": {"architecture": "mlp", "kwargs": {"hidden": TEACHER_HIDDEN}},
        "dataset": {"name": "digits"},
        "distillation": {"method": "none"},
        "training": {"epochs": 8, "batch_size": 64, "lr": 0.05, "seed": 0},
        "resources": {"device": "cpu"},
    }
    s.update(over)
    return s


def kd_spec(teacher: dict[str, Any], epochs: int = 6, **over: Any) -> dict[str, Any]:
    """Classic kd from `teacher` into an mlp of 32 on digits."""
    return spec(student={"architecture": "mlp", "kwargs": {"hidden": [32]}}, teacher=teacher,
                distillation={"method": "kd", "temperature": 4.0, "alpha": 0.9},
                training={"epochs": epochs, "batch_size": 64, "lr": 0.05, "seed": 0}, **over)


def npz_bytes(n_train: int = 20, n_test: int = 6) -> bytes:
    """A tiny two-class .npz dataset (8x8 uint8 images)."""
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, x_train=rng.integers(0, 255, (n_train, 8, 8), dtype=np.uint8), y_train=np.arange(n_train) % 2,
             x_test=rng.integers(0, 255, (n_test, 8, 8), dtype=np.uint8), y_test=np.arange(n_test) % 2)
    return buf.getvalue()


def sse_events(http: httpx.Client, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Reads a job's server-sent event stream until the server ends it (the job has ended)."""
    out: list[tuple[str, dict[str, Any]]] = []
    kind = None
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers={"Accept": "text/event-stream"},
                     timeout=httpx.Timeout(120, read=60)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                out.append((kind, json.loads(line[6:])))
                if kind == "end":
                    break
    return out


class Receiver:
    """A loopback HTTP server answering POSTs with the next status of `answers` (then 200)."""

    def __init__(self, answers: list[int] | None = None, location: str | None = None):
        self.answers = list(answers or [])
        self.got: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append((dict(self.headers), body))
                code = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(code)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
