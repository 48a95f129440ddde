"""The synchronous client.

    from distillery.client import Client

    with Client("http://127.0.0.1:8000", key) as c:
        report = c.jobs.create("spec.yaml").wait()     # follows the event stream to the end
        print(report.student.top1, report.kd_gain)
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import httpx
from pydantic import PrivateAttr

import distillery.client.common as common
from distillery.client.errors import ApiError, JobFailed
from distillery.client.models import Artifact, Event, JobInfo, JobList, Report, Status


class Client:
    """One HTTP connection pool to a Distillery server. `url` and `key` default to DISTILLERY_URL and
    DISTILLERY_API_KEY. Every failed request raises ApiError (with the server's problem+json)."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: httpx.Timeout | float | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url, self.key = common.resolve(url, key)
        self.http = httpx.Client(base_url=self.url, headers=common.headers(self.key),
                                 timeout=timeout or common.TIMEOUT, transport=transport)
        self.jobs = Jobs(self)
        self.artifacts = Artifacts(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ApiError.unreachable(e, self.url) from e
        if r.status_code >= 400:
            raise ApiError.from_response(r)
        return r

    def catalog(self) -> dict[str, Any]:
        return self.request("GET", "/v1/catalog").json()


class Job(JobInfo):
    """A job's state when last read, with the calls that act on it."""

    _client: Client = PrivateAttr()

    def bind(self, client: Client) -> Job:
        self._client = client
        return self

    def refresh(self) -> Job:
        return self._client.jobs.get(self.id)

    def follow(self, timeout: float | None = None) -> Iterator[Event]:
        return self._client.jobs.events(self.id, timeout=timeout)

    def wait(self, timeout: float | None = None) -> Report:
        return self._client.jobs.wait(self.id, timeout=timeout)

    def cancel(self) -> Job:
        return self._client.jobs.cancel(self.id)

    def fetch_report(self) -> Report:
        return self._client.jobs.report(self.id)

    def download(self, name: str = "student.safetensors", dest: str | os.PathLike[str] | None = None) -> Path:
        return self._client.jobs.download(self.id, name, dest)


class Jobs:
    def __init__(self, client: Client) -> None:
        self.c = client

    def create(self, spec: Mapping[str, Any] | str | os.PathLike[str], idempotency_key: str | None = None) -> Job:
        """Submits a JobSpec (a dict, or a .yaml/.json file); the job comes back queued."""
        extra = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        r = self.c.request("POST", "/v1/jobs", json=common.load_spec(spec), headers=extra)
        return Job.model_validate(r.json()).bind(self.c)

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self.c.request("GET", f"/v1/jobs/{job_id}").json()).bind(self.c)

    def list(self, status: Status | str | None = None, limit: int = 20, cursor: str | None = None) -> JobList:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = str(status)
        if cursor:
            params["cursor"] = cursor
        return JobList.model_validate(self.c.request("GET", "/v1/jobs", params=params).json())

    def cancel(self, job_id: str) -> Job:
        return Job.model_validate(self.c.request("POST", f"/v1/jobs/{job_id}/cancel").json()).bind(self.c)

    def report(self, job_id: str) -> Report:
        return Report.model_validate(self.c.request("GET", f"/v1/jobs/{job_id}/report").json())

    def events(self, job_id: str, after: str | None = None, timeout: float | None = None) -> Iterator[Event]:
        """The job's events from the server-sent stream, from the first (or after `after`) until the `end`
        event, which is yielded last. A broken stream is reopened where it stopped (Last-Event-ID); the
        server being unreachable for longer than `common.UNREACHABLE_S` raises ApiError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        parser = common.SSEParser()
        parser.last_id = after
        down_since: float | None = None
        while True:
            hdrs = {"Accept": "text/event-stream"}
            if parser.last_id:
                hdrs["Last-Event-ID"] = parser.last_id
            try:
                with self.c.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=hdrs,
                                        timeout=common.STREAM_TIMEOUT) as r:
                    if r.status_code >= 400:
                        r.read()
                        raise ApiError.from_response(r)
                    down_since = None
                    for line in r.iter_lines():
                        common.check_deadline(deadline, job_id)
                        event = parser.feed(line)
                        if event is not None:
                            yield event
                            if event.type == "end":
                                return
            except httpx.TransportError as e:
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > common.UNREACHABLE_S:
                    raise ApiError.unreachable(e, self.c.url) from e
            common.check_deadline(deadline, job_id)
            time.sleep(common.RECONNECT_S)  # the stream ended without `end`, or broke: reopen it

    def wait(self, job_id: str, timeout: float | None = None) -> Report:
        """Follows the job to its end and returns its report; raises JobFailed when it failed or was
        cancelled, TimeoutError after `timeout` seconds (the job goes on)."""
        for _ in self.events(job_id, timeout=timeout):
            pass
        job = self.get(job_id)
        if job.status != Status.SUCCEEDED:
            raise JobFailed(job)
        return self.report(job_id)

    def download(self, job_id: str, name: str = "student.safetensors",
                 dest: str | os.PathLike[str] | None = None) -> Path:
        """Streams one of the job's outputs to `dest` (a file, or a folder to put `<job>-<name>` in;
        default: the current folder); written under a temporary name and renamed when complete."""
        path = common.download_path(job_id, name, dest)
        part = path.with_name(path.name + ".part")
        try:
            with self.c.http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as r:
                if r.status_code >= 400:
                    r.read()
                    raise ApiError.from_response(r)
                with open(part, "wb") as out:
                    for chunk in r.iter_bytes(common.CHUNK):
                        out.write(chunk)
        except httpx.TransportError as e:
            part.unlink(missing_ok=True)
            raise ApiError.unreachable(e, self.c.url) from e
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        part.replace(path)
        return path


class Artifacts:
    def __init__(self, client: Client) -> None:
        self.c = client

    def upload(self, file: str | os.PathLike[str] | IO[bytes], filename: str | None = None) -> Artifact:
        """Uploads a teacher checkpoint or a dataset. The body streams from the open file in chunks (httpx's
        multipart stream reads it piece by piece), so a large file is never held in memory."""
        with common.open_upload(file, filename) as (name, fh):
            r = self.c.request("POST", "/v1/artifacts", files={"file": (name, fh, "application/octet-stream")},
                               timeout=common.UPLOAD_TIMEOUT)
        return Artifact.model_validate(r.json())

    def get(self, art_id: str) -> Artifact:
        return Artifact.model_validate(self.c.request("GET", f"/v1/artifacts/{art_id}").json())
