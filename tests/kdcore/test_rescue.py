"""The rescue rules and their rollback, one by one (kdcore/rescue.py); the loop around them is exercised on
real data in test_divergence.py and, through the service, in tests/e2e/test_rescues.py."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdcore.errors import JobError
from kdcore.optim import lr_lambda
from kdcore.rescue import Guard, Snapshot, halve_lr, window_steps


def _guard(reference: float | None = None, max_rescues: int = 3) -> Guard:
    return Guard(10, reference, max_rescues, [], "lower training.lr (now 0.1)")


def test_window_rules() -> None:
    g = _guard()
    assert g.window(2.3, 0.10, 2.30) is None  # the untrained start seeds the averages
    assert "became nan" in (g.window(math.nan, 0.1, 2.3) or "")
    assert "became inf" in (g.window(1.0, 0.1, math.inf) or "")
    assert "validation loss spiked" in (g.window(2.0, 0.3, 12.0) or "")  # 5x the probe's average, +9.7 nats
    assert g.window(2.0, 0.3, 4.0) is None  # 1.7x: noise, not a spike
    # a training loss 50x its average with a student at chance: a step killed it
    assert "blew up" in (_seeded().window(500.0, 0.1, 2.3) or "")
    # the same loss growth while the student learns: a warm-up of the soft term, by design
    learning = _seeded()
    assert learning.window(3.0, 0.6, 1.2) is None and learning.window(500.0, 0.65, 1.0) is None


def _seeded() -> Guard:
    g = _guard()
    assert g.window(2.3, 0.1, 2.3) is None
    return g


def test_accuracy_that_fell_and_a_student_stuck_below_a_good_teacher() -> None:
    g = _guard()
    for acc in (0.3, 0.7, 0.9):
        assert g.window(1.0, acc, 1.0) is None
    assert "fell from 0.900 to 0.120" in (g.window(1.0, 0.12, 1.0) or "")
    # below a 98 % teacher: judged 25 % into an epoch once the phase has trained 100 steps, not before
    t = _guard(reference=0.98)
    assert t.below_teacher(0.11) and not t.below_teacher(0.5)
    assert t.window(2.3, 0.11, 2.3, into_epoch=0.9, phase_steps=60) is None
    assert t.window(2.3, 0.11, 2.3, into_epoch=0.1, phase_steps=500) is None
    assert "still 0.110" in (t.window(2.3, 0.11, 2.3, into_epoch=0.26, phase_steps=110) or "")
    # a bad teacher is no reference: a student at chance beside it is left alone
    assert _guard(reference=0.3).window(2.3, 0.11, 2.3, into_epoch=0.5, phase_steps=1000) is None


def test_epoch_rules() -> None:
    t = _guard(reference=0.98)
    assert t.epoch(0.11, phase_steps=40, last=False) is None  # a small dataset's slow start
    assert "while the teacher scores 0.980" in (t.epoch(0.11, phase_steps=40, last=True) or "")  # never a success
    assert "needs more epochs" in (t.epoch(0.11, phase_steps=400, last=False) or "")
    assert t.epoch(0.9, phase_steps=400, last=True) is None
    alone = _guard()
    assert alone.epoch(0.11, phase_steps=400, last=True) is None  # no teacher, no rescue yet: maybe random labels
    alone.rescues.append({"epoch": 1})
    assert "after 1 rescue(s)" in (alone.epoch(0.11, phase_steps=400, last=False) or "")


def test_rollback_restores_the_state_and_the_halving_accumulates() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.4, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda("cosine", 100, 10, 10))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        sched.step()

    step()
    snap = Snapshot.take(1, model, opt, sched, scaler, torch.tensor([2.0]))
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    g = _guard(max_rescues=2)
    for want in (0.2, 0.1):
        for _ in range(3):
            step()
        bases = list(sched.base_lrs)
        sums = snap.restore(model, opt, sched, scaler)
        row = g.rescue("why", epoch=0, step=4, opt=opt, sched=sched, bases=bases)
        assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
        assert sums is not None and sums.item() == 2.0 and sched.last_epoch == 1
        assert row["lr_after"] == pytest.approx(want) and sched.base_lrs[0] == pytest.approx(want)
        assert opt.param_groups[0]["lr"] == pytest.approx(want * lr_lambda("cosine", 100, 10, 10)(1))
    assert [r["lr_before"] for r in g.rescues] == pytest.approx([0.4, 0.2])
    with pytest.raises(JobError) as e:  # the third failure, with two rescues spent
        g.rescue("the loss became nan", epoch=0, step=9, opt=opt, sched=sched, bases=list(sched.base_lrs))
    assert e.value.code == "diverged" and "2 rescue(s) already spent" in e.value.message
    assert "rolled back with lr 0.2, 0.1" in e.value.message and "lower training.lr (now 0.1)" in e.value.message


def test_halve_lr_and_window_size() -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    assert halve_lr(opt, sched, [1.0]) == (1.0, 0.5) and opt.param_groups[0]["lr"] == 0.25
    assert window_steps(422) == 22 and window_steps(21) == 10
