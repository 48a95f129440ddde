"""What the sync and async clients share: settings, headers, spec files, the event-stream parser."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import httpx

from distillery.client.models import Event

URL_ENV = "DISTILLERY_URL"
KEY_ENV = "DISTILLERY_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"
# Status calls are quick; a stream waits up to the server's block time between heartbeats, so its read
# timeout only needs to outlast that (the server ends it when the job ends).
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
STREAM_TIMEOUT = httpx.Timeout(60.0, connect=10.0, read=120.0)
UPLOAD_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
# How long to wait before reconnecting an event stream that broke (the API restarting, a proxy timeout).
RECONNECT_S = 1.0


def resolve(url: str | None, key: str | None) -> tuple[str, str | None]:
    """The server and key: arguments first, then DISTILLERY_URL / DISTILLERY_API_KEY (names apart from the
    server's KD_API_KEYS, so a shell that runs both never mixes them up), then the local default."""
    url = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    key = key if key is not None else (os.environ.get(KEY_ENV) or None)
    return url, key


def headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def load_spec(spec: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """A JobSpec as a dict: given as one, or read from a .yaml/.yml/.json file (YAML is a superset of
    JSON, so any other name is read as YAML too)."""
    if isinstance(spec, Mapping):
        return dict(spec)
    path = Path(spec)
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
    else:
        import yaml  # only when a YAML file is read

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:  # its message spans lines (the context, a caret): keep one
            raise ValueError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a JobSpec is a mapping (name, student, dataset, ...), not {type(data).__name__}")
    return data


class SSEParser:
    """Turns the lines of a `text/event-stream` body into Events (id, event, data; blank line ends one)."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self._id: str | None = None
        self._type = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        if line == "":
            if not self._data:
                return None
            data = json.loads("\n".join(self._data))
            ts = data.pop("ts", None) if isinstance(data, dict) else None
            event = Event(id=self._id, type=self._type, ts=ts, data=data if isinstance(data, dict) else {})
            if self._id:
                self.last_id = self._id
            self._id, self._type, self._data = None, "message", []
            return event
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            self._id = value
        elif name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        return None


UNREACHABLE_S = 30.0  # an event stream gives up after the server has been away this long
CHUNK = 1 << 16


def check_deadline(deadline: float | None, job_id: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"job {job_id} did not end in time; it goes on (cancel it to stop it)")


def download_path(job_id: str, name: str, dest: str | os.PathLike[str] | None) -> Path:
    path = Path(dest) if dest is not None else Path.cwd()
    return path / f"{job_id}-{name}" if path.is_dir() else path


@contextmanager
def open_upload(file: str | os.PathLike[str] | IO[bytes], filename: str | None) -> Iterator[tuple[str, IO[bytes]]]:
    """(name, open binary file) for an upload: a path is opened (and closed after), a file object is
    used as it is; the name's extension tells the server the format."""
    if isinstance(file, str | os.PathLike):
        path = Path(file)
        with open(path, "rb") as fh:
            yield filename or path.name, fh
    else:
        yield filename or Path(getattr(file, "name", "upload")).name, file
