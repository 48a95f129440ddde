"""Divergence without NaN, provoked on real data (digits): too large a step sends the student to chance
with a finite loss; the loop stops with `diverged` and advice on the learning rate."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kdcore.divergence import Diverged, check_divergence
from kdcore.errors import JobError
from kdcore.spec import JobSpec
from kdcore.train import run


def _spec(lr: float, momentum: float, hidden: list[int], epochs: int = 5, **over: Any) -> JobSpec:
    s: dict[str, Any] = {"student": {"architecture": "mlp", "kwargs": {"hidden": hidden}},
                         "dataset": {"name": "digits"},
                         "distillation": {"method": "none"}, "resources": {"device": "cpu"},
                         "training": {"epochs": epochs, "batch_size": 32, "lr": lr, "momentum": momentum,
                                      "lr_schedule": "constant", "seed": 0}}
    s.update(over)
    return JobSpec.model_validate(s)


def _run_collecting(spec: JobSpec, digits, workdir: Path,
                    rescues: list[dict[str, Any]] | None = None) -> tuple[JobError, list[dict[str, Any]]]:
    epochs: list[dict[str, Any]] = []

    def on_event(kind: str, d: dict[str, Any]) -> None:
        if kind == "epoch":
            epochs.append(d)
        elif kind == "rescue" and rescues is not None:
            rescues.append(d)

    with pytest.raises(JobError) as e:
        run(spec, digits, [], workdir, on_event)
    return e.value, epochs


def test_accuracy_that_falls_to_chance_is_diverged(digits, tmp_path: Path) -> None:
    # lr 0.5 with momentum 0.98: the student learns, then the step throws it to chance; the fall is seen
    # within the epoch on the validation probe, rolled back three times with half the step, then given up
    rescues: list[dict[str, Any]] = []
    err, epochs = _run_collecting(_spec(0.5, 0.98, [256], epochs=8), digits, tmp_path, rescues)
    assert err.code == "diverged", err.message
    assert "fell from" in err.message and "lower training.lr (now 0.5)" in err.message
    assert "3 rescue(s) already spent" in err.message
    assert [r["lr_after"] for r in rescues] == [0.25, 0.125, 0.0625] and all("fell from" in r["why"] for r in rescues)
    assert max(r["val_top1"] for r in epochs) > 0.55
    assert len(epochs) < 8  # stopped early, not after spending every epoch


def test_a_loss_that_blew_up_is_rolled_back_with_half_the_step(digits, tmp_path: Path) -> None:
    # lr 5: the loss spikes within the first window twice (5 -> 2.5 -> 1.25), then the student sits at chance
    # at the epoch's end after those rescues: a third rollback (0.625) takes, and the job goes on from there
    events: list[tuple[str, dict[str, Any]]] = []
    rep = run(_spec(5.0, 0.9, [64]), digits, [], tmp_path, lambda kind, d: events.append((kind, d)))
    rescues = [d for k, d in events if k == "rescue"]
    assert [(r["lr_before"], r["lr_after"]) for r in rescues] == [(5.0, 2.5), (2.5, 1.25), (1.25, 0.625)]
    assert "blew up" in rescues[0]["why"] and "after" in rescues[2]["why"]
    assert [{k: v for k, v in r.items() if k not in ("phase", "to_step")} for r in rescues] == rep["rescues"]
    assert rep["student"]["val_top1"] > 0.5 and all(r["val_top1"] > 0.2 for r in rep["epochs"])


def test_distillation_advice_names_the_temperature() -> None:
    history = [{"epoch": 1, "train_loss": 0.9, "test_top1": 0.91}, {"epoch": 2, "train_loss": 2.3, "test_top1": 0.1},
               {"epoch": 3, "train_loss": 2.3, "test_top1": 0.1}]
    with pytest.raises(Diverged) as e:
        check_divergence(history, 10, 0.1, temperature=20.0)
    assert "T^2 = 400" in str(e.value) and "lower training.lr (now 0.1)" in str(e.value)


@pytest.mark.parametrize("accs,losses", [
    ([0.10, 0.11, 0.10, 0.12], [2.31, 2.30, 2.30, 2.29]),  # slow to learn, or random labels: flat loss near chance
    ([0.90, 0.95, 0.12, 0.96], [0.5, 0.3, 2.0, 0.2]),  # one bad epoch it recovers from
    ([0.50, 0.55, 0.60], [1.0, 0.9, 0.8]),  # learning
])
def test_runs_that_did_not_diverge_are_left_alone(accs: list[float], losses: list[float]) -> None:
    history = [{"epoch": i + 1, "train_loss": loss, "test_top1": acc}
               for i, (acc, loss) in enumerate(zip(accs, losses, strict=True))]
    for n in range(1, len(history) + 1):
        check_divergence(history[:n], 10, 0.1, None)


def test_a_healthy_run_is_not_flagged(digits, tmp_path: Path) -> None:
    rep = run(_spec(0.05, 0.9, [64], epochs=3), digits, [], tmp_path)
    assert rep["student"]["top1"] > 0.9


def test_a_distilled_student_stuck_at_chance_below_a_good_teacher_is_diverged(digits, tmp_path: Path) -> None:
    # The measured case (KD at T=20, SGD lr 0.1, an 800-800 student on digits) sits on the edge of a NaN
    # loss: whether its student sticks at chance from epoch 1, learns a little and falls back, or overflows
    # depends on the CPU's float kernels and thread count (all three were seen). Here the student is held at
    # chance deterministically, by a step too small to move it, so that this rule alone is what fires; the
    # teacher (trained here on labels) shows the data is learnable.
    from kdcore.checkpoints import load_student
    from kdcore.train import Teacher

    run(_spec(0.05, 0.9, [256, 256], epochs=8, training={"epochs": 8, "batch_size": 64, "lr": 0.05}),
        digits, [], tmp_path / "teacher")
    teacher, _ = load_student(tmp_path / "teacher" / "student.safetensors")
    spec = _spec(1e-6, 0.9, [800, 800], epochs=6, teacher={"checkpoint": "art_teacher"},
                 distillation={"method": "kd", "temperature": 20.0, "alpha": 0.9})
    epochs: list[dict[str, Any]] = []
    with pytest.raises(JobError) as e:
        run(spec, digits, [Teacher(teacher, 1, 1)], tmp_path / "kd",
            lambda kind, d: epochs.append(d) if kind == "epoch" else None)
    # at chance below a good teacher once the phase has trained 100 steps (21 an epoch here): rolled back
    # three times (kdcore.rescue), then the job fails rather than keep a student at chance
    assert e.value.code == "diverged" and "while the teacher scores" in e.value.message
    assert "alpha*T = 18" in e.value.message and "3 rescue(s) already spent" in e.value.message
    assert len(epochs) < 6 and all(r["val_top1"] < 0.2 for r in epochs)
