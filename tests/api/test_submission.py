"""Submit-time checks and the submit itself (api/submission.py) against a real Redis, called directly:
each problem is a 422 naming its field, a job waits for teacher jobs still running, and a broker that
refuses turns into a 503 with the job failed rather than left queued."""
from __future__ import annotations

from pathlib import Path

import pytest
import redis

from api.errors import Problem
from api.submission import check_submission, pending_teacher_jobs, submit_job
from kdcore.spec import JobSpec
from worker.artifacts import ArtifactStore
from worker.lifecycle import Lifecycle, Status
from worker.store import JobStore

BASE = {"student": {"architecture": "mlp", "kwargs": {"hidden": [8]}}, "dataset": {"name": "digits"},
        "distillation": {"method": "kd"}, "training": {"epochs": 1}, "resources": {"device": "cpu"}}


def _spec(**over) -> JobSpec:
    return JobSpec.model_validate({**BASE, **over})


def _errors(spec: JobSpec, tenant: str, store: JobStore, arts: ArtifactStore) -> list[tuple[list, str]]:
    with pytest.raises(Problem) as info:
        check_submission(spec, tenant, store, arts)
    assert info.value.status == 422
    return [(e["loc"], e["msg"]) for e in info.value.errors or []]


def _artifact(store: JobStore, art_id: str, fmt: str, tenant: str = "t", **meta) -> None:
    store.put_artifact({"id": art_id, "tenant": tenant, "filename": f"x.{fmt}", "sha256": "0", "size": 1,
                        "format": fmt, "created_at": "now", "path": "/nonexistent", "meta": meta})


@pytest.fixture
def lc(redis_client: redis.Redis) -> Lifecycle:
    return Lifecycle(JobStore(redis_client), lambda job_id, queue: None)


def test_teacher_uploads_are_checked_against_the_dataset(lc: Lifecycle, tmp_path: Path) -> None:
    store, arts = lc.store, ArtifactStore(tmp_path)
    _artifact(store, "art_sd", "safetensors", num_outputs=10)
    _artifact(store, "art_onnx", "onnx", num_outputs=3, input_shape=[1, 1, 28, 28])
    _artifact(store, "art_data", "npz")
    _artifact(store, "art_other", "safetensors", tenant="u")
    cases = {
        "art_missing": (["body", "teacher", "checkpoint"], "no artifact"),
        "art_other": (["body", "teacher", "checkpoint"], "no artifact"),  # another tenant's upload
        "art_data": (["body", "teacher", "checkpoint"], "is a dataset"),
        "art_sd": (["body", "teacher", "architecture"], "needs `architecture`"),
    }
    for art, (loc, msg) in cases.items():
        errors = _errors(_spec(teacher={"checkpoint": art}), "t", store, arts)
        assert any(e_loc == loc and msg in e_msg for e_loc, e_msg in errors), (art, errors)
    onnx = _errors(_spec(teacher={"checkpoint": "art_onnx"}, distillation={"method": "fitnets"}), "t", store, arts)
    msgs = " | ".join(m for _, m in onnx)
    assert "intermediate features" in msgs and "outputs 3 classes" in msgs and "(1, 28, 28)" in msgs
    # several teachers: the index is in the location
    errors = _errors(_spec(teacher=[{"checkpoint": "art_sd", "architecture": "mlp"}, {"checkpoint": "art_x"}]),
                     "t", store, arts)
    assert errors == [(["body", "teacher", 1, "checkpoint"], "no artifact art_x")]
    check_submission(_spec(teacher={"checkpoint": "art_sd", "architecture": "mlp"}), "t", store, arts)


def test_teacher_jobs_that_failed_or_still_run(lc: Lifecycle, tmp_path: Path) -> None:
    store, arts = lc.store, ArtifactStore(tmp_path)
    failed, _ = lc.submit("t", _spec(distillation={"method": "none"}).model_dump(mode="json"), "cpu")
    lc.fail(failed["id"], "x", "y")
    running, _ = lc.submit("t", _spec(distillation={"method": "none"}).model_dump(mode="json"), "cpu")
    lc.start(running["id"])
    other_data, _ = lc.submit("t", {**BASE, "dataset": {"name": "mnist"}}, "cpu")
    errors = _errors(_spec(teacher={"job": failed["id"]}), "t", store, arts)
    assert errors[0][0] == ["body", "teacher", "job"] and "is failed" in errors[0][1]
    errors = _errors(_spec(teacher={"job": other_data["id"]}), "t", store, arts)
    assert "trains on mnist, not digits" in errors[0][1]
    assert _errors(_spec(teacher={"job": "job_nope"}), "t", store, arts)[0][1] == "no job job_nope"
    waiting = _spec(teacher={"job": running["id"]})
    check_submission(waiting, "t", store, arts)  # accepted: it waits
    assert pending_teacher_jobs(waiting, "t", store) == [running["id"]]
    rec = submit_job(waiting, "t", lc)
    assert rec["status"] == Status.QUEUED and rec["waiting_for"] == [running["id"]]


def test_a_broker_that_refuses_is_a_503_and_the_job_fails(redis_client: redis.Redis) -> None:
    def refuse(job_id: str, queue: str) -> None:
        raise ConnectionError("broker away")

    lc = Lifecycle(JobStore(redis_client), refuse)
    with pytest.raises(Problem) as info:
        submit_job(_spec(distillation={"method": "none"}), "t", lc)
    assert info.value.status == 503 and "not accepted" in info.value.detail
    (job_id,) = redis_client.zrange("kd:jobs:t", 0, -1)
    assert lc.store.get_job(job_id)["error"]["code"] == "enqueue_failed"


def test_an_uploaded_dataset_is_not_read_again_at_submit(lc: Lifecycle, tmp_path: Path) -> None:
    """The facts recorded when the dataset was uploaded serve every later submit: the file itself may be
    large, and is not opened (here it is gone, and the submit still knows its classes)."""
    from kdcore.datasets import dataset_info

    described = {**dataset_info("digits").describe(), "name": "npz", "num_classes": 3}
    _artifact(lc.store, "art_data", "npz", dataset=described)
    spec = _spec(dataset={"name": "npz", "artifact": "art_data"}, distillation={"method": "none"})
    check_submission(spec, "t", lc.store, ArtifactStore(tmp_path))  # path /nonexistent is never read
    _artifact(lc.store, "art_sd", "safetensors", num_outputs=10)
    errors = _errors(_spec(dataset={"name": "npz", "artifact": "art_data"},
                           teacher={"checkpoint": "art_sd", "architecture": "mlp"}), "t", lc.store,
                     ArtifactStore(tmp_path))
    assert errors == [(["body", "teacher", "checkpoint"], "teacher outputs 10 classes but dataset npz has 3")]


def test_teacher_input_is_checked_through_its_adapter(lc: Lifecycle, tmp_path: Path) -> None:
    """A 32x32 teacher on 28x28 MNIST: the 422 names teacher.input.size (or .channels, .mean) with what the
    teacher takes, what the dataset gives and what to set; with the adapter set the job is accepted."""
    store, arts = lc.store, ArtifactStore(tmp_path)
    inp = {"batch": "bounded", "batch_min": 1, "batch_max": 64, "dtype": "float32"}
    _artifact(store, "art_grey", "export", num_outputs=10, input={**inp, "shape": [1, 32, 32]})
    _artifact(store, "art_rgb", "onnx", num_outputs=10, input_shape=[1, 3, 32, 32])  # a record without `input`
    _artifact(store, "art_any", "export", num_outputs=10, input={**inp, "shape": [1, None, None]})
    mnist = {"dataset": {"name": "mnist"}}
    errors = _errors(_spec(teacher={"checkpoint": "art_grey"}, **mnist), "t", store, arts)
    assert errors == [(["body", "teacher", "input", "size"], "teacher takes input (1, 32, 32) but dataset mnist "
                       "gives (1, 28, 28); set teacher.input.size: [32, 32]")]
    wrong = _errors(_spec(teacher={"checkpoint": "art_grey", "input": {"size": [30, 30]}}, **mnist), "t", store, arts)
    assert "which teacher.input makes (1, 30, 30); set teacher.input.size: [32, 32]" in wrong[0][1]
    rgb = _errors(_spec(teacher={"checkpoint": "art_rgb", "input": {"size": [32, 32], "mean": [0.5] * 3,
                                                                    "std": [0.5] * 3}}, **mnist), "t", store, arts)
    assert [loc for loc, _ in rgb] == [["body", "teacher", "input", "channels"]]
    assert "set teacher.input.channels: 3" in rgb[0][1]
    means = _errors(_spec(teacher={"checkpoint": "art_grey", "input": {"size": [32, 32], "mean": [0.5] * 3,
                                                                       "std": [0.5]}}, **mnist), "t", store, arts)
    assert [loc for loc, _ in means] == [["body", "teacher", "input", "mean"]]
    for ok in ({"checkpoint": "art_grey", "input": {"size": [32, 32], "mean": [0.5], "std": [0.5]}},
               {"checkpoint": "art_rgb", "input": {"size": [32, 32], "channels": 3}, "outputs": "log_probs"},
               {"checkpoint": "art_any"}):
        check_submission(_spec(teacher=ok, **mnist), "t", store, arts)
