"""The asynchronous client: the same calls as `Client`, awaited (httpx.AsyncClient underneath).

    async with AsyncClient(url, key) as c:
        job = await c.jobs.create(spec)
        async for event in c.jobs.events(job.id):
            ...
        report = await job.wait()
"""
from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO, Any

import httpx
from pydantic import PrivateAttr

import distillery.client.common as common
from distillery.client.errors import ApiError, JobFailed
from distillery.client.models import Artifact, Event, JobInfo, JobList, Report, Status


class AsyncClient:
    """The async twin of `Client`: every call is a coroutine, events an async iterator."""

    def __init__(self, url: str | None = None, key: str | None = None, *, timeout: httpx.Timeout | float | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url, self.key = common.resolve(url, key)
        self.http = httpx.AsyncClient(base_url=self.url, headers=common.headers(self.key),
                                      timeout=timeout or common.TIMEOUT, transport=transport)
        self.jobs = AsyncJobs(self)
        self.artifacts = AsyncArtifacts(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = await self.http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ApiError.unreachable(e, self.url) from e
        if r.status_code >= 400:
            raise ApiError.from_response(r)
        return r

    async def catalog(self) -> dict[str, Any]:
        return (await self.request("GET", "/v1/catalog")).json()


class AsyncJob(JobInfo):
    """A job's state when last read, with the (awaitable) calls that act on it."""

    _client: AsyncClient = PrivateAttr()

    def bind(self, client: AsyncClient) -> AsyncJob:
        self._client = client
        return self

    async def refresh(self) -> AsyncJob:
        return await self._client.jobs.get(self.id)

    def follow(self, timeout: float | None = None) -> AsyncIterator[Event]:
        return self._client.jobs.events(self.id, timeout=timeout)

    async def wait(self, timeout: float | None = None) -> Report:
        return await self._client.jobs.wait(self.id, timeout=timeout)

    async def cancel(self) -> AsyncJob:
        return await self._client.jobs.cancel(self.id)

    async def fetch_report(self) -> Report:
        return await self._client.jobs.report(self.id)

    async def download(self, name: str = "student.safetensors", dest: str | os.PathLike[str] | None = None) -> Path:
        return await self._client.jobs.download(self.id, name, dest)


class AsyncJobs:
    def __init__(self, client: AsyncClient) -> None:
        self.c = client

    async def create(self, spec: Mapping[str, Any] | str | os.PathLike[str],
                     idempotency_key: str | None = None) -> AsyncJob:
        extra = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        r = await self.c.request("POST", "/v1/jobs", json=common.load_spec(spec), headers=extra)
        return AsyncJob.model_validate(r.json()).bind(self.c)

    async def get(self, job_id: str) -> AsyncJob:
        return AsyncJob.model_validate((await self.c.request("GET", f"/v1/jobs/{job_id}")).json()).bind(self.c)

    async def list(self, status: Status | str | None = None, limit: int = 20, cursor: str | None = None) -> JobList:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = str(status)
        if cursor:
            params["cursor"] = cursor
        return JobList.model_validate((await self.c.request("GET", "/v1/jobs", params=params)).json())

    async def cancel(self, job_id: str) -> AsyncJob:
        r = await self.c.request("POST", f"/v1/jobs/{job_id}/cancel")
        return AsyncJob.model_validate(r.json()).bind(self.c)

    async def report(self, job_id: str) -> Report:
        return Report.model_validate((await self.c.request("GET", f"/v1/jobs/{job_id}/report")).json())

    async def events(self, job_id: str, after: str | None = None,
                     timeout: float | None = None) -> AsyncIterator[Event]:
        """As `Jobs.events`: until `end`, reopening a broken stream where it stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        parser = common.SSEParser()
        parser.last_id = after
        down_since: float | None = None
        while True:
            hdrs = {"Accept": "text/event-stream"}
            if parser.last_id:
                hdrs["Last-Event-ID"] = parser.last_id
            try:
                async with self.c.http.stream("GET", f"/v1/jobs/{job_id}/events", headers=hdrs,
                                              timeout=common.STREAM_TIMEOUT) as r:
                    if r.status_code >= 400:
                        await r.aread()
                        raise ApiError.from_response(r)
                    down_since = None
                    async for line in r.aiter_lines():
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
            await asyncio.sleep(common.RECONNECT_S)

    async def wait(self, job_id: str, timeout: float | None = None) -> Report:
        async for _ in self.events(job_id, timeout=timeout):
            pass
        job = await self.get(job_id)
        if job.status != Status.SUCCEEDED:
            raise JobFailed(job)
        return await self.report(job_id)

    async def download(self, job_id: str, name: str = "student.safetensors",
                       dest: str | os.PathLike[str] | None = None) -> Path:
        path = common.download_path(job_id, name, dest)
        part = path.with_name(path.name + ".part")
        try:
            async with self.c.http.stream("GET", f"/v1/jobs/{job_id}/artifacts/{name}") as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise ApiError.from_response(r)
                with open(part, "wb") as out:
                    async for chunk in r.aiter_bytes(common.CHUNK):
                        out.write(chunk)
        except httpx.TransportError as e:
            part.unlink(missing_ok=True)
            raise ApiError.unreachable(e, self.c.url) from e
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        part.replace(path)
        return path


class AsyncArtifacts:
    def __init__(self, client: AsyncClient) -> None:
        self.c = client

    async def upload(self, file: str | os.PathLike[str] | IO[bytes], filename: str | None = None) -> Artifact:
        """Streams the file from disk (httpx reads the open file chunk by chunk as it sends)."""
        with common.open_upload(file, filename) as (name, fh):
            r = await self.c.request("POST", "/v1/artifacts", files={"file": (name, fh, "application/octet-stream")},
                                     timeout=common.UPLOAD_TIMEOUT)
        return Artifact.model_validate(r.json())

    async def get(self, art_id: str) -> Artifact:
        return Artifact.model_validate((await self.c.request("GET", f"/v1/artifacts/{art_id}")).json())
