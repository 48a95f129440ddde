"""The client's exceptions. Every failed request raises ApiError, carrying the server's problem+json
document (RFC 9457: type, title, status, detail, and `errors` naming each bad field of a 422); a server
that cannot be reached raises it too, with `status` None, so callers catch one type."""
from __future__ import annotations

from typing import Any

import httpx


class DistilleryError(Exception):
    """Base of the client's exceptions."""


class ApiError(DistilleryError):
    def __init__(self, status: int | None, problem: dict[str, Any], method: str = "", url: str = ""):
        self.status = status
        self.problem = problem
        self.method, self.url = method, url
        super().__init__(self.line())

    @property
    def detail(self) -> str:
        return str(self.problem.get("detail") or self.problem.get("title") or "error")

    @property
    def errors(self) -> list[dict[str, Any]]:
        """For a 422: one entry per bad field, `loc` naming it."""
        return list(self.problem.get("errors") or [])

    def line(self) -> str:
        """One line saying what went wrong (what the CLI prints)."""
        if self.status is None:
            return f"cannot reach {self.url}: {self.detail}"
        return f"{self.status} {self.problem.get('title') or 'Error'}: {self.detail}"

    @classmethod
    def from_response(cls, r: httpx.Response) -> ApiError:
        try:
            body = r.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):  # a proxy's HTML page, say: keep its start as the detail
            body = {"type": "about:blank", "title": r.reason_phrase, "status": r.status_code,
                    "detail": r.text[:200].strip() or r.reason_phrase}
        return cls(r.status_code, body, r.request.method, str(r.request.url))

    @classmethod
    def unreachable(cls, exc: httpx.TransportError, url: str) -> ApiError:
        return cls(None, {"type": "about:blank", "title": "Unreachable", "detail": str(exc) or type(exc).__name__},
                   url=url)


class JobFailed(DistilleryError):
    """`wait()` on a job that ended without succeeding (failed or cancelled); `job` is its final state."""

    def __init__(self, job: Any):
        self.job = job
        why = f": {job.error.code}: {job.error.message}" if job.error else ""
        super().__init__(f"job {job.id} {job.status}{why}")
