"""The validation split (training.validation) and what chooses on it (training.keep: best): held out of
the train split, seeded and stratified; the teacher's reference, the rescues and keep-best read it, the
test split is only reported."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from kdcore.checkpoints import load_student
from kdcore.datasets.base import HeldOutData, holdout_rows, validation_size
from kdcore.evaluate import evaluate
from kdcore.spec import JobSpec, TrainingSpec
from kdcore.train import run


def _spec(**training: Any) -> JobSpec:
    return JobSpec.model_validate({
        "student": {"architecture": "mlp", "kwargs": {"hidden": [64]}}, "dataset": {"name": "digits"},
        "distillation": {"method": "none"}, "resources": {"device": "cpu"},
        "training": {"epochs": 4, "batch_size": 64, "lr": 0.05, "seed": 3, **training}})


def test_holdout_is_stratified_seeded_and_disjoint(digits) -> None:
    y = digits.y_train
    train, val = holdout_rows(y, 144, seed=3)
    assert len(val) == 144 and len(train) == len(y) - 144
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(len(y)))  # disjoint, complete
    assert torch.equal(train, torch.sort(train).values)  # train rows in order (sequential reads)
    # every class gives its share (to within the one row that rounding owes)
    share = torch.bincount(y, minlength=10).double() * 144 / len(y)
    assert (torch.bincount(y[val], minlength=10).double() - share).abs().max() < 1
    again, other = holdout_rows(y, 144, seed=3)[1], holdout_rows(y, 144, seed=4)[1]
    assert torch.equal(again, val) and not torch.equal(torch.sort(other).values, torch.sort(val).values)
    assert not torch.equal(val, torch.sort(val).values)  # shuffled: a prefix (the probe) is a fair sample


def test_validation_size_fraction_count_and_bounds() -> None:
    assert validation_size(1437, 0.1) == 144 and validation_size(1437, 500) == 500 and validation_size(1437, 0) == 0
    assert TrainingSpec(validation=0.5).validation == 0.5 and TrainingSpec(validation=6000).validation == 6000
    for bad in (0.7, 2.5, -0.1):
        with pytest.raises(ValidationError):
            TrainingSpec(validation=bad)
    with pytest.raises(ValidationError, match="needs `validation`"):
        TrainingSpec(keep="best", validation=0)


def test_report_carries_validation_beside_test(digits, tmp_path: Path) -> None:
    rep = run(_spec(epochs=2), digits, [], tmp_path / "on")
    assert rep["validation"] == {"samples": 144, "train_samples": 1293, "keep": "last"}
    assert all(r["val_top1"] > 0.5 and r["test_top1"] > 0.5 for r in rep["epochs"])
    assert rep["student"]["val_top1"] == rep["epochs"][-1]["val_top1"]
    off = run(_spec(epochs=2, validation=0), digits, [], tmp_path / "off")
    assert off["validation"]["samples"] == 0 and off["validation"]["train_samples"] == 1437
    assert off["student"]["val_top1"] is None and off["epochs"][0]["val_top1"] is None
    with pytest.raises(Exception, match="at most half"):
        run(_spec(validation=1000), digits, [], tmp_path / "too_many")


def test_keep_best_saves_the_epoch_with_the_highest_validation_top1(digits, tmp_path: Path) -> None:
    # a constant, large step makes the epochs' validation scores go up and down
    rep = run(_spec(epochs=6, keep="best", lr=0.3, lr_schedule="constant"), digits, [], tmp_path)
    vals = [r["val_top1"] for r in rep["epochs"]]
    best = vals.index(max(vals)) + 1
    assert best < 6 and vals[-1] < max(vals)  # the case keep-best is for: the last epoch is not the best
    assert rep["student"]["kept_epoch"] == best and rep["validation"]["keep"] == "best"
    assert rep["student"]["val_top1"] == max(vals)
    # the file holds those weights: they score the kept epoch's validation and test top-1 again
    model, _ = load_student(tmp_path / "student.safetensors")
    held = HeldOutData.hold_out(digits, 144, 3)
    assert evaluate(model, held.val, torch.device("cpu"))["top1"] == pytest.approx(max(vals), abs=1e-6)
    assert rep["student"]["top1"] == pytest.approx(rep["epochs"][best - 1]["test_top1"], abs=1e-6)
    last = run(_spec(epochs=6, lr=0.3, lr_schedule="constant"), digits, [], tmp_path / "last")
    assert "kept_epoch" not in last["student"] and last["student"]["val_top1"] == vals[-1]
