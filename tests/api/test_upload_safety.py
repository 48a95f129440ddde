"""Uploads never run code, never choose their own path, are hashed, and are cut off while streaming.
Through the real app (in-process, or served by uvicorn for chunked bodies) on a real Redis."""
from __future__ import annotations

import hashlib
import io
import pickle
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import torch
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from tests.harness import serve_app as serve


class _OpenOnUnpickle:
    """Unpickling this object creates a file: it stands for any code an attacker would run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _uploads(data_dir: Path) -> list[Path]:
    d = data_dir / "artifacts" / "uploads"
    return sorted(d.iterdir()) if d.is_dir() else []


def _state_dict_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save(torch.nn.Linear(64, 10).state_dict(), buf)
    return buf.getvalue()


@pytest.fixture
def http(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(redis_url=redis_url, data_dir=tmp_path / "data"))) as client:
        yield client


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_that_runs_code_is_refused_and_never_runs(http: TestClient, redis_client: redis.Redis,
                                                         tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    zipped = io.BytesIO()
    torch.save({"weight": _OpenOnUnpickle(marker)}, zipped)  # torch's zip layout: gets as far as torch.load
    raw = pickle.dumps({"weight": _OpenOnUnpickle(marker)})  # a bare pickle
    for body in (zipped.getvalue(), raw):
        for name in ("evil.pt", "evil.pth", "evil.pt2", "evil.npz", "evil.zip", "evil.safetensors", "evil.onnx"):
            r = http.post("/v1/artifacts", files={"file": (name, body)})
            assert r.status_code == 422, (name, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["errors"][0]["loc"] == ["body", "file"]
    assert not marker.exists()
    assert _uploads(tmp_path / "data") == [] and list(redis_client.scan_iter("kd:artifact:*")) == []
    # nor can a job name it as its teacher: nothing was stored under any id
    r = http.post("/v1/jobs", json={"teacher": {"checkpoint": "art_0000000000", "architecture": "mlp"},
                                    "student": {"architecture": "mlp"}, "dataset": {"name": "digits"}})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "teacher", "checkpoint"]
    assert not marker.exists()


@pytest.mark.parametrize("client_name", ["../../evil.pt", "..\\..\\evil.pt", "/etc/evil.pt", "sub/dir/evil.pt"])
def test_stored_under_a_generated_id_never_the_client_path(http: TestClient, tmp_path: Path,
                                                           client_name: str) -> None:
    body = _state_dict_bytes()
    r = http.post("/v1/artifacts", files={"file": (client_name, body)})
    assert r.status_code == 201, r.text
    art = r.json()
    assert art["filename"] == "evil.pt" and art["id"].startswith("art_")
    assert art["sha256"] == hashlib.sha256(body).hexdigest() and art["size"] == len(body)
    stored = _uploads(tmp_path / "data")
    assert [p.name for p in stored] == [f"{art['id']}.pt"] and stored[0].read_bytes() == body
    assert not list(tmp_path.rglob("evil.pt"))


def test_archives_with_traversal_or_bombs_are_refused(http: TestClient, tmp_path: Path) -> None:
    for member in ("../../escape.png", "train/../../../escape.png", "/abs/escape.png", "..\\..\\escape.png"):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("train/a/0.png", b"x")
            zf.writestr(member, b"x")
        r = http.post("/v1/artifacts", files={"file": ("images.zip", buf.getvalue())})
        assert r.status_code == 422 and "unsafe path" in r.json()["detail"], (member, r.text)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("train/a/zeros.png", b"\0" * (32 << 20))
    r = http.post("/v1/artifacts", files={"file": ("bomb.zip", bomb.getvalue())})
    assert r.status_code == 422 and "expand" in r.json()["detail"]
    assert _uploads(tmp_path / "data") == [] and not list(tmp_path.rglob("escape.png"))


def test_malformed_requests_are_4xx(http: TestClient) -> None:
    assert http.post("/v1/artifacts", json={"file": "x"}).status_code == 415
    r = http.post("/v1/artifacts", files={"other": ("x.pt", b"data")})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "file"]
    r = http.post("/v1/artifacts", files={"file": ("notes.txt", b"hello")})
    assert r.status_code == 422 and "accepted file types" in r.json()["detail"]
    r = http.post("/v1/artifacts", content=b"--xyz\r\ngarbage", headers={"Content-Type": "multipart/form-data"})
    assert r.status_code == 400


def _multipart_stream(total: int, sent: list[int]) -> Iterator[bytes]:
    """A multipart body produced as it is sent (chunked, no Content-Length); `sent` counts its bytes."""
    head = (b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.npz\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\nPK\x03\x04")
    sent[0] += len(head)
    yield head
    chunk = b"\0" * 65536
    while sent[0] < total:
        sent[0] += len(chunk)
        yield chunk
    sent[0] += 8
    yield b"\r\n--B--\r\n"


def test_chunked_upload_is_cut_off_at_the_limit(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> None:
    limit = 1 << 20
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, max_upload_bytes=limit)
    with serve(settings) as base:
        sent = [0]
        total = 256 << 20
        try:
            with httpx.Client(base_url=base, timeout=60) as client:
                r = client.post("/v1/artifacts", content=_multipart_stream(total, sent),
                                headers={"Content-Type": "multipart/form-data; boundary=B"})
            assert r.status_code == 413 and str(limit) in r.json()["detail"]
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            pass  # the server answered 413 and closed the connection while we were still sending
        # the server stopped reading long before the body's end, and kept nothing
        assert sent[0] < total // 4, sent[0]
        assert _uploads(tmp_path) == [] and list(redis_client.scan_iter("kd:artifact:*")) == []
        # a body just over the limit, chunked, gets the 413 answer itself
        sent = [0]
        with httpx.Client(base_url=base, timeout=60) as client:
            r = client.post("/v1/artifacts", content=_multipart_stream(limit + 200_000, sent),
                            headers={"Content-Type": "multipart/form-data; boundary=B"})
        assert r.status_code == 413
        assert _uploads(tmp_path) == []


def test_declared_length_over_the_limit_is_refused_before_reading(redis_url: str, tmp_path: Path) -> None:
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, max_upload_bytes=1 << 20)
    with serve(settings) as base:
        host, port = base.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"POST /v1/artifacts HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
                         b"Content-Length: 10737418240\r\n\r\n")  # 10 GiB announced, none sent
            answer = sock.recv(65536).decode("latin-1")
        assert answer.startswith("HTTP/1.1 413"), answer[:200]
        assert _uploads(tmp_path) == []
