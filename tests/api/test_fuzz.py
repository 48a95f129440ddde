"""Schemathesis against the live OpenAPI schema of the real app (its own /openapi.json, real Redis):
for every operation, generated requests, valid and invalid, must never get a 5xx, and every answer
must match what the schema documents (status code, content type, body schema, headers).

Bounded and repeatable: a fixed number of examples per operation, derandomized. There is no worker,
so submitted jobs stay queued (fuzzed specs never train).
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from api.settings import Settings

EXAMPLES = 25  # per operation and mode (valid and invalid data)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]


@pytest.fixture(scope="module")
def fuzzed_app(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    redis.Redis.from_url(redis_url).flushdb()
    data = tmp_path_factory.mktemp("fuzz")
    yield create_app(Settings(redis_url=redis_url, data_dir=data, dataset_root=data / "datasets",
                              max_upload_bytes=1 << 20))


@pytest.fixture(scope="module")
def api_schema(fuzzed_app: FastAPI) -> schemathesis.schemas.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", fuzzed_app)


# The operations, from the schema alone (building the app connects to nothing).
# Invalid data needs something that can be invalid: operations whose only inputs are free-form path
# segments (any string is a valid id) get valid data only.
OPERATIONS = [(path, method.upper(), mode) for path, ops in
              create_app(Settings(redis_url="redis://127.0.0.1:9/0")).openapi()["paths"].items()
              for method, op in ops.items()
              for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
              if mode == GenerationMode.POSITIVE or op.get("requestBody")
              or any(p["in"] != "path" for p in op.get("parameters", []))]


@pytest.mark.parametrize(("path", "method", "mode"), OPERATIONS, ids=[f"{m} {p} {g}" for p, m, g in OPERATIONS])
def test_api_conforms_to_its_schema(api_schema: schemathesis.schemas.BaseSchema, path: str, method: str,
                                    mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: schemathesis.Case) -> None:
        # /readyz answers 503 here by design (no worker runs in this test); the schema documents it
        case.call_and_validate(checks=CHECKS[1:] if path == "/readyz" else CHECKS)

    fuzz()
