"""distillery.client against the live API (the session's `service` stack: Redis, a Celery worker, the API
under uvicorn): a job created and waited for returns its report, outputs download to disk, an upload
streams from disk and serves as a teacher, events stream, errors are ApiError with the problem+json; the
models match the served OpenAPI schema; and importing the client loads no torch."""
from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from distillery.client import ApiError, AsyncClient, Client, JobFailed, Report, Status
from distillery.client.common import CHUNK, SSEParser
from distillery.client.models import SCHEMA_COMPONENTS
from distillery.redis_server import free_port
from tests import helpers
from tests.harness import ROOT, Stack

FAST = {"epochs": 2, "batch_size": 64, "lr": 0.05, "seed": 0}
HEAVY = ("torch", "numpy", "celery", "kombu", "fastapi", "starlette", "uvicorn", "api", "kdcore", "sklearn")


@pytest.mark.parametrize("module", ["distillery.client", "distillery.jobs_cli"])
def test_importing_the_client_loads_no_torch(module: str) -> None:
    code = (f"import sys, {module}; "
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- the models against the served schema ---------------------------------------------------------------

def _kinds(node: dict[str, Any], comps: dict[str, Any], names: dict[str, str]) -> set[Any]:
    """The JSON types a schema node allows, null left out, references resolved to a component name (an
    enum to its values), so that the server's and the client's schemas compare."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[1]
        target = comps.get(name, {})
        if "enum" in target:
            return {("enum", tuple(sorted(target["enum"])))}
        return {("ref", names.get(name, name))}
    if "anyOf" in node:
        return set().union(*(_kinds(n, comps, names) for n in node["anyOf"]))
    if "enum" in node:
        return {("enum", tuple(sorted(node["enum"])))}
    kind = node.get("type")
    if kind == "array":
        return {("array", frozenset(_kinds(node.get("items", {}), comps, names)))}
    return set() if kind == "null" else {kind}


def test_models_match_the_live_openapi_schema(service: Stack) -> None:
    served = httpx.get(f"{service.base}/openapi.json", timeout=30).json()["components"]["schemas"]
    client_names = {model.__name__: component for component, model in SCHEMA_COMPONENTS.items()}
    for component, model in SCHEMA_COMPONENTS.items():
        theirs = served[component]
        ours = model.model_json_schema(ref_template="#/components/schemas/{model}")
        ours_defs = ours.get("$defs", {})
        assert set(ours["properties"]) == set(theirs["properties"]), component
        # the client never requires what the server may leave out
        assert set(ours.get("required", [])) <= set(theirs.get("required", [])), component
        for field, node in theirs["properties"].items():
            server_kinds = _kinds(node, served, {})
            client_kinds = _kinds(ours["properties"][field], {**served, **ours_defs}, client_names)
            assert client_kinds == server_kinds, f"{component}.{field}: {client_kinds} != {server_kinds}"


# --- jobs, outputs and uploads ----------------------------------------------------------------------------

class CountingFile(io.FileIO):
    """A file that records how much each read asked for: the upload must read it piece by piece."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "rb")
        self.reads: list[int] = []

    def read(self, size: int = -1) -> bytes:
        self.reads.append(size)
        return super().read(size)


def test_create_wait_download_and_upload_as_teacher(service: Stack, tmp_path: Path) -> None:
    with Client(service.base) as client:
        spec_file = tmp_path / "teacher.yaml"
        import yaml

        spec_file.write_text(yaml.safe_dump(helpers.spec(name="client-teacher", training=FAST)))
        teacher = client.jobs.create(spec_file)  # from a YAML file
        assert teacher.status == Status.QUEUED and teacher.name == "client-teacher"
        report = teacher.wait(timeout=120)
        assert isinstance(report, Report) and report.student.top1 is not None and report.student.top1 > 0.5
        assert [e["epoch"] for e in report.epochs] == [1, 2]
        assert teacher.refresh().status == Status.SUCCEEDED
        assert teacher.id in [j.id for j in client.jobs.list(status=Status.SUCCEEDED, limit=200).data]

        weights = teacher.download("student.safetensors", tmp_path)
        assert weights == tmp_path / f"{teacher.id}-student.safetensors"
        served = httpx.get(f"{service.base}/v1/jobs/{teacher.id}/artifacts/student.safetensors", timeout=30).content
        assert weights.read_bytes() == served and not list(tmp_path.glob("*.part"))

        with CountingFile(weights) as fh:
            art = client.artifacts.upload(fh, "teacher.safetensors")
        assert fh.reads and all(0 < n <= CHUNK for n in fh.reads[:-1])  # chunk by chunk, never all at once
        assert art.size == len(served) and art.format == "safetensors"
        assert client.artifacts.get(art.id).sha256 == art.sha256

        uploaded = {"checkpoint": art.id, "architecture": "mlp", "kwargs": {"hidden": helpers.TEACHER_HIDDEN}}
        kd = helpers.kd_spec(uploaded, epochs=2, baseline=True, export={"formats": [], "latency": True})
        job = client.jobs.create(kd)
        events = list(job.follow(timeout=120))
        assert events[-1].type == "end" and events[-1].data["status"] == Status.SUCCEEDED
        assert [e.data["epoch"] for e in events if e.type == "epoch" and e.data["phase"] == "distill"] == [1, 2]
        report = job.wait(timeout=60)  # already ended: the stream replays and ends at once
        assert report.teacher is not None and report.teacher.params and report.compression and report.compression > 1
        assert report.kd_gain == pytest.approx(report.student.top1 - report.baseline["top1"], abs=1e-5)
        assert set(report.latency["batches"]) == {"1", "64"} and report.latency["batches"]["64"]["student_ms"] > 0
        assert report.exported_files == []  # latency only: no file was asked for


def test_errors_are_api_errors_with_the_problem(service: Stack) -> None:
    with Client(service.base) as client:
        bad = helpers.spec(student={"architecture": "no-such-net"})
        with pytest.raises(ApiError) as exc:
            client.jobs.create(bad)
        assert exc.value.status == 422 and exc.value.problem["status"] == 422
        assert exc.value.errors[0]["loc"][:2] == ["body", "student"]
        assert exc.value.line().startswith("422 Invalid input: student")
        with pytest.raises(ApiError) as exc:
            client.jobs.get("job_0000000000000000")
        assert exc.value.status == 404 and "no job job_0000000000000000" in exc.value.detail
        with pytest.raises(ApiError) as exc:
            client.jobs.download("job_0000000000000000", "student.safetensors", Path("/nonexistent"))
        assert exc.value.status == 404
    dead = f"http://127.0.0.1:{free_port()}"
    with Client(dead) as client, pytest.raises(ApiError) as exc:
        client.jobs.list()
    assert exc.value.status is None and exc.value.line().startswith(f"cannot reach {dead}")


def test_async_client_runs_uploads_downloads_and_cancels(service: Stack, tmp_path: Path) -> None:
    long = helpers.spec(name="client-long", training={**FAST, "epochs": 500})
    data = tmp_path / "two-classes.npz"
    data.write_bytes(helpers.npz_bytes())

    async def scenario() -> dict[str, Any]:
        async with AsyncClient(service.base) as client:
            art = await client.artifacts.upload(data)  # a path: opened, streamed, closed
            assert art.format == "npz" and art.size == data.stat().st_size
            assert (await client.artifacts.get(art.id)).sha256 == art.sha256

            tiny = await client.jobs.create(helpers.TINY_SPEC)
            report = await tiny.wait(timeout=120)
            saved = await tiny.download("report.json", tmp_path)
            assert json.loads(saved.read_text())["student"]["top1"] == report.student.top1
            assert tiny.id in [j.id for j in (await client.jobs.list(limit=200)).data]

            job = await client.jobs.create(long)
            seen: list[str] = []
            async for event in job.follow(timeout=120):
                seen.append(event.type)
                if event.type == "epoch" and seen.count("epoch") == 1:
                    await job.cancel()  # running: it stops at its next step
            with pytest.raises(JobFailed) as exc:
                await job.wait(timeout=60)
            return {"seen": seen, "job": exc.value.job}

    got = asyncio.run(scenario())
    assert "epoch" in got["seen"] and got["seen"][-1] == "end"  # the stream ends by itself with the job
    assert got["job"].status == Status.CANCELLED and got["job"].ended


def test_sse_parser_keeps_ids_and_skips_keep_alives() -> None:
    parser = SSEParser()
    lines = ["id: 1-0", "event: epoch", 'data: {"epoch": 1, "ts": "t"}', "", ": keep-alive", "",
             "event: end", f"data: {json.dumps({'status': 'x'})}", ""]
    events = [e for line in lines if (e := parser.feed(line)) is not None]
    assert [(e.id, e.type, e.ts, e.data) for e in events] == [("1-0", "epoch", "t", {"epoch": 1}),
                                                              (None, "end", None, {"status": "x"})]
    assert parser.last_id == "1-0"
