"""Schedules of the temperature and alpha over the epochs, and the warm-up of the soft term."""
from __future__ import annotations

import pytest

from kdcore.schedules import ScheduleSpec


def test_schedules_move_temperature_and_alpha_over_the_epochs() -> None:
    s = ScheduleSpec.model_validate({"temperature": {"kind": "linear", "start": 8, "end": 2},
                                     "alpha": {"kind": "step", "start": 0.9, "milestones": [2, 3], "gamma": 0.5},
                                     "warmup_epochs": 2})
    assert [s.temperature_at(4.0, e, 4) for e in (0, 2, 4)] == pytest.approx([8, 5, 2])
    assert [s.alpha_at(0.5, e, 4) for e in (0, 1.9, 2, 3.5)] == pytest.approx([0.9, 0.9, 0.45, 0.225])
    assert [s.warmup_at(e) for e in (0, 1, 3)] == pytest.approx([0, 0.5, 1])
    cos = ScheduleSpec.model_validate({"temperature": {"kind": "cosine", "start": 1, "end": 3}})
    assert cos.temperature_at(4.0, 5, 10) == pytest.approx(2.0)
    sig = ScheduleSpec.model_validate({"alpha": {"kind": "sigmoid", "start": 0, "end": 1}})
    vals = [sig.alpha_at(0.9, e, 10) for e in range(11)]
    assert vals[0] == pytest.approx(0) and vals[5] == pytest.approx(0.5) and vals[10] == pytest.approx(1)
    assert vals == sorted(vals)
    assert ScheduleSpec().temperature_at(4.0, 3, 10) == 4.0  # no schedule: the constant value
    with pytest.raises(ValueError, match="milestones"):
        ScheduleSpec.model_validate({"alpha": {"kind": "step"}})
    with pytest.raises(ValueError, match=r"alpha.end must be in \[0, 1\]"):
        ScheduleSpec.model_validate({"alpha": {"kind": "linear", "end": 2}})
