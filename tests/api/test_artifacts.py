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
