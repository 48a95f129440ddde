"""422s name fields as users write them, for the one-teacher and the list forms of `teacher` alike
(pydantic reports each shape of a union under an internal name; api/validation.py resolves them)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from api.main import create_app
from api.settings import Settings

BASE = {"student": {"architecture": "mlp"}, "dataset": {"name": "digits"}, "distillation": {"method": "kd"}}


@pytest.fixture
def http(redis_url: str, redis_client: redis.Redis, tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(redis_url=redis_url, data_dir=tmp_path))) as client:
        yield client


def _errors(http: TestClient, teacher: object) -> list[tuple[list, str]]:
    r = http.post("/v1/jobs", json={**BASE, "teacher": teacher})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert "function-after" not in body["detail"] and "list[" not in body["detail"], body["detail"]
    return [(e["loc"], e["msg"]) for e in body["errors"]]


@pytest.mark.parametrize(("teacher", "expected"), [
    ({"checkpoint": "art_x", "input": {"sise": [32, 32]}},
     [(["body", "teacher", "input", "sise"], "Extra inputs are not permitted")]),
    ([{"checkpoint": "art_x", "input": {"sise": [32, 32]}}],
     [(["body", "teacher", 0, "input", "sise"], "Extra inputs are not permitted")]),
    ({"checkpoint": "art_x", "input": {"size": [32, 32], "mean": [0.5]}},
     [(["body", "teacher", "input"], "give `mean` and `std` together (the teacher's normalization); leave both "
                                     "out to keep the dataset's")]),
    ([{"checkpoint": "art_x"}, {"job": "j", "weight": -1}],
     [(["body", "teacher", 1, "weight"], "Input should be greater than 0")]),
    ({"checkpoint": "a", "job": "b"}, [(["body", "teacher"], "a teacher needs exactly one source: `checkpoint` "
                                         "(an uploaded artifact id) or `job` (an earlier job's id)")]),
    (5, [(["body", "teacher"], "Input should be a list or an object")]),
])
def test_teacher_errors_name_the_field_as_written(http: TestClient, teacher: object,
                                                  expected: list[tuple[list, str]]) -> None:
    assert _errors(http, teacher) == expected


def test_detail_names_the_field_too(http: TestClient) -> None:
    r = http.post("/v1/jobs", json={**BASE, "teacher": {"checkpoint": "art_x", "input": {"sise": [32, 32]}}})
    assert r.json()["detail"] == "teacher.input.sise: Extra inputs are not permitted"
    r = http.post("/v1/jobs", json={**BASE, "training": {"epochs": 0}})
    assert r.json()["errors"] == [{"loc": ["body", "training", "epochs"], "type": "greater_than_equal",
                                   "msg": "Input should be greater than or equal to 1"}]
