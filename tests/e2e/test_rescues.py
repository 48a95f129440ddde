"""No silent collapse, through the service (issue 13). The measured case: an mlp 1200-1200 teacher
trained one epoch on MNIST labels, then a lenet5 student distilled with the catalog's defaults (T=4,
alpha 0.9, SGD lr 0.05, batch 128) for one epoch, with a baseline. Before the rescues its student sat
at chance (10.2 %) and the job said `succeeded`. Now a collapse is rolled back with half the step and
reported; an absurd step fails with `diverged`. Both read validation only (the report's val_top1)."""
from __future__ import annotations

from typing import Any

import pytest

from tests.harness import MNIST_DIR, Stack

pytestmark = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST files at {MNIST_DIR}")

RESCUE_KEYS = {"epoch", "step", "lr_before", "lr_after", "why"}


@pytest.fixture(scope="module")
def mnist_teacher(service: Stack) -> dict[str, Any]:
    job = service.wait(service.submit({
        "name": "mnist-teacher", "dataset": {"name": "mnist"}, "distillation": {"method": "none"},
        "student": {"architecture": "mlp", "kwargs": {"hidden": [1200, 1200]}},
        "training": {"epochs": 1, "batch_size": 128, "lr": 0.05, "seed": 0}, "resources": {"device": "cpu"}}), 600)
    assert job["status"] == "succeeded", job["error"]
    assert job["report"]["student"]["val_top1"] > 0.95
    return job


def _student(teacher: dict[str, Any], lr: float) -> dict[str, Any]:
    return {"teacher": {"job": teacher["id"]}, "dataset": {"name": "mnist"}, "student": {"architecture": "lenet5"},
            "distillation": {"method": "kd", "temperature": 4, "alpha": 0.9}, "baseline": True,
            "training": {"epochs": 1, "batch_size": 128, "lr": lr, "seed": 0}, "resources": {"device": "cpu"}}


def test_the_measured_lenet5_collapse_is_rescued(service: Stack, mnist_teacher: dict[str, Any]) -> None:
    job_id = service.submit(_student(mnist_teacher, 0.05))
    job = service.wait(job_id, 900)
    assert job["status"] == "succeeded", job["error"]
    rep = job["report"]
    assert rep["student"]["top1"] >= 0.95 and rep["student"]["val_top1"] >= 0.95
    # the collapse happened and was rolled back with half the step, each time recorded
    assert rep["rescues"] and all(set(r) == RESCUE_KEYS for r in rep["rescues"])
    assert rep["rescues"][0]["lr_before"] == 0.05
    assert all(r["lr_after"] == r["lr_before"] / 2 for r in rep["rescues"])
    events = [e["data"] for e in service.events(job_id) if e["type"] == "rescue"]
    rescued = rep["rescues"] + rep["baseline"]["rescues"]
    assert [(e["phase"], e["lr_after"]) for e in events] == [
        *(("distill", r["lr_after"]) for r in rep["rescues"]), *(("baseline", r["lr_after"]) for r in rescued[
            len(rep["rescues"]):])]
    # validation beside test, for the student, its baseline and its teacher
    assert rep["epochs"][0]["val_top1"] >= 0.95 and rep["epochs"][0]["test_top1"] >= 0.95
    assert rep["baseline"]["val_top1"] > 0.95 and rep["teacher"]["val_top1"] > 0.95
    assert rep["validation"] == {"samples": 6000, "train_samples": 54000, "keep": "last"}


def test_an_absurd_step_fails_with_diverged(service: Stack, mnist_teacher: dict[str, Any]) -> None:
    job = service.wait(service.submit(_student(mnist_teacher, 5.0)), 600)
    assert job["status"] == "failed" and job["error"]["code"] == "diverged", job
    assert "3 rescue(s) already spent" in job["error"]["message"]
    assert "lower training.lr (now 5)" in job["error"]["message"]
