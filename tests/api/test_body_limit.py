"""KD_MAX_BODY_BYTES: JSON bodies over it answer 413 problem+json and write nothing, whether the length
was announced or the body streamed in chunks; uploads are exempt (they have their own streaming limit)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings

LIMIT = 4000
SPEC = {"student": {"architecture": "mlp", "kwargs": {"hidden": [8]}}, "dataset": {"name": "digits"},
        "distillation": {"method": "none"}, "training": {"epochs": 1}, "resources": {"device": "cpu"}}
BIG = {**SPEC, "name": "x" * 200, "description": "y" * (2 * LIMIT)}


def _app(redis_url: str, tmp_path: Path) -> TestClient:
    return TestClient(create_app(Settings(redis_url=redis_url, data_dir=tmp_path, max_body_bytes=LIMIT,
                                          max_upload_bytes=10**7)))


def _assert_413(r) -> None:
    assert r.status_code == 413
    assert r.headers["content-type"].startswith("application/problem+json")
    assert f"over {LIMIT} bytes (KD_MAX_BODY_BYTES)" in r.json()["detail"]


def test_json_bodies_over_the_limit_are_refused_and_write_nothing(redis_url: str, redis_client,
                                                                  tmp_path: Path) -> None:
    body = json.dumps(BIG).encode()
    with _app(redis_url, tmp_path) as http:
        _assert_413(http.post("/v1/jobs", content=body, headers={"content-type": "application/json"}))
        chunks = (body[i:i + 1000] for i in range(0, len(body), 1000))  # no Content-Length: chunked
        _assert_413(http.post("/v1/jobs", content=chunks, headers={"content-type": "application/json"}))
        _assert_413(http.post("/v1/chains", content=body, headers={"content-type": "application/json"}))
        assert http.get("/v1/jobs").json()["data"] == []
        assert http.post("/v1/jobs", json=SPEC).status_code == 202  # a normal spec is far below it


def test_uploads_are_not_held_to_the_json_limit(redis_url: str, redis_client, tmp_path: Path) -> None:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buf, x_train=rng.integers(0, 255, (40, 8, 8), dtype=np.uint8), y_train=np.arange(40) % 2,
             x_test=rng.integers(0, 255, (10, 8, 8), dtype=np.uint8), y_test=np.arange(10) % 2)
    assert len(buf.getvalue()) > LIMIT
    with _app(redis_url, tmp_path) as http:
        r = http.post("/v1/artifacts", files={"file": ("d.npz", buf.getvalue())})
        assert r.status_code == 201, r.text
