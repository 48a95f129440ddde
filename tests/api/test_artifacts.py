"""Uploads through the real app factory with a real Redis."""
from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings
from tests.helpers import npz_bytes as _npz


def test_upload_over_the_limit_is_413_and_leaves_nothing(redis_url: str, tmp_path: Path) -> None:
    app = create_app(Settings(redis_url=redis_url, data_dir=tmp_path, max_upload_bytes=1000))
    with TestClient(app) as http:
        r = http.post("/v1/artifacts", files={"file": ("big.npz", _npz() + b"\0" * 5000)})
        assert r.status_code == 413 and "1000" in r.json()["detail"]
    uploads = tmp_path / "artifacts" / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())


def test_with_a_shared_storage_an_upload_is_published_there_before_its_record(redis_url: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    app = create_app(Settings(redis_url=redis_url, data_dir=tmp_path / "api", storage_url=shared.as_uri()))
    with TestClient(app) as http:
        r = http.post("/v1/artifacts", files={"file": ("d.npz", _npz())})
        assert r.status_code == 201, r.text
        art = r.json()["id"]
        assert (shared / "uploads" / f"{art}.npz").read_bytes() == _npz()
        bad = http.post("/v1/artifacts", files={"file": ("x.npz", b"PK\3\4 not a zip")})
        assert bad.status_code == 422 and len(list((shared / "uploads").iterdir())) == 1  # refused: not published
