"""The training loop on real data (digits): seeded, resumable from its epoch checkpoint, cancellable."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from kdcore.checkpoints import load_student
from kdcore.errors import Cancelled, JobError
from kdcore.spec import JobSpec
from kdcore.train import CHECKPOINT, Teacher, run


def _spec(**over: Any) -> JobSpec:
    s: dict[str, Any] = {"student": {"architecture": "mlp", "kwargs": {"hidden": [64]}}, "dataset": {"name": "digits"},
                         "distillation": {"method": "none"},
                         "training": {"epochs": 4, "batch_size": 64, "lr": 0.05, "seed": 3}}
    s.update(over)
    return JobSpec.model_validate(s)


def test_resume_continues_from_the_epoch_checkpoint(digits, tmp_path: Path) -> None:
    full = run(_spec(), digits, [], tmp_path / "full")

    events: list[tuple[str, dict]] = []
    epochs_seen = 0

    def stop_after_two() -> bool:
        return epochs_seen >= 2

    def on_event(kind: str, data: dict) -> None:
        nonlocal epochs_seen
        events.append((kind, data))
        epochs_seen += kind == "epoch"

    work = tmp_path / "interrupted"
    with pytest.raises(Cancelled):
        run(_spec(), digits, [], work, on_event, stop_after_two)
    state = torch.load(work / CHECKPOINT, weights_only=True)
    assert state["epoch"] == 2 and {"student", "optimizer", "scheduler"} <= state.keys()

    events.clear()
    resumed = run(_spec(), digits, [], work, on_event)
    assert any(k == "log" and "resumed distill from its epoch 2" in d["message"] for k, d in events)
    assert [d["epoch"] for k, d in events if k == "epoch"] == [3, 4]
    assert [r["epoch"] for r in resumed["epochs"]] == [1, 2, 3, 4]
    # same seed, same data order per epoch: the resumed run ends where the uninterrupted one did
    assert resumed["student"]["top1"] == pytest.approx(full["student"]["top1"], abs=1e-6)
    assert resumed["epochs"][-1]["train_loss"] == pytest.approx(full["epochs"][-1]["train_loss"], rel=1e-4)


def test_kd_with_baseline_report_and_student_file(digits, tmp_path: Path) -> None:
    teacher_dir = tmp_path / "teacher"
    run(_spec(student={"architecture": "mlp", "kwargs": {"hidden": [256]}}), digits, [], teacher_dir)
    tmodel, _ = load_student(teacher_dir / "student.safetensors")
    before = {k: v.clone() for k, v in tmodel.state_dict().items()}
    spec = _spec(teacher={"job": "job_x"}, distillation={"method": "kd", "temperature": 4, "alpha": 0.9},
                 baseline=True, training={"epochs": 3, "batch_size": 64, "lr": 0.05})
    progress: list[dict] = []
    rep = run(spec, digits, [Teacher(tmodel, params=1000, size_bytes=10)], tmp_path / "kd",
              lambda k, d: progress.append(d) if k == "progress" else None)
    assert rep["teacher"]["top1"] > 0.8 and rep["student"]["top1"] > 0.8
    assert rep["baseline"]["top1"] > 0.5 and rep["kd_gain"] == pytest.approx(
        rep["student"]["top1"] - rep["baseline"]["top1"], abs=1e-9)
    assert 0 < rep["agreement"] <= 1 and rep["compression"] == pytest.approx(1000 / rep["student"]["params"], rel=1e-3)
    assert (tmp_path / "kd" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    # the teacher is never trained: same weights, still in eval mode
    assert all(torch.equal(before[k], v) for k, v in tmodel.state_dict().items())
    assert not tmodel.training
    assert progress and all(0 <= p["fraction"] <= 1 and p["loss"] >= 0 for p in progress)


def test_teacher_with_wrong_class_count_fails_clearly(digits, tmp_path: Path) -> None:
    wrong = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7))
    spec = _spec(teacher={"job": "job_x"}, distillation={"method": "kd"})
    with pytest.raises(JobError) as e:
        run(spec, digits, [Teacher(wrong)], tmp_path)
    assert e.value.code == "class_mismatch" and "7" in e.value.message


def test_diverging_loss_is_a_clear_failure(digits, tmp_path: Path) -> None:
    spec = _spec(training={"epochs": 2, "batch_size": 64, "lr": 10.0, "momentum": 0.99, "lr_schedule": "constant"},
                 student={"architecture": "mlp", "kwargs": {"hidden": [512, 512]}})
    with pytest.raises(JobError) as e:
        run(spec, digits, [], tmp_path)
    # each blow-up is rolled back with half the step (kdcore.rescue); lr 10 -> 1.25 still blows up
    assert e.value.code == "diverged" and "3 rescue(s) already spent" in e.value.message
    assert "rolled back with lr 5, 2.5, 1.25" in e.value.message and "lower training.lr (now 10)" in e.value.message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only machine")
def test_the_device_and_threads_passed_in_are_used(digits, tmp_path: Path) -> None:
    # resources.device cuda would fail with no_cuda here if run() resolved it again
    spec = _spec(resources={"device": "cuda"}, training={"epochs": 1, "batch_size": 64, "lr": 0.05})
    before = torch.get_num_threads()
    try:
        rep = run(spec, digits, [], tmp_path, device=torch.device("cpu"), threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert rep["device"] == "cpu" and rep["student"]["top1"] > 0.5
    with pytest.raises(JobError) as e:
        run(spec, digits, [], tmp_path / "resolved")
    assert e.value.code == "no_cuda"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_with_auto_precision(digits, tmp_path: Path) -> None:
    spec = _spec(resources={"device": "cuda", "precision": "auto"},
                 student={"architecture": "cifar_resnet20", "kwargs": {}})
    rep = run(spec, digits, [], tmp_path)
    assert rep["device"] == "cuda" and rep["precision"] in ("bf16", "fp32")
    assert rep["student"]["top1"] > 0.5
