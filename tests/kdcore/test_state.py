"""TrainState: what the checkpoint holds, under the keys checkpoints have always used."""
from __future__ import annotations

from pathlib import Path

import torch

from kdcore.state import TrainState


def test_round_trip_through_the_checkpoint_file(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    s = TrainState(done={"teacher": {"top1": 0.9}})
    s.start("distill")
    s.teacher_cache, s.compile = "built", "off"
    s.history.append({"epoch": 1, "train_loss": 0.5})
    s.end_epoch(1, model, opt, sched)
    s.save(tmp_path / "checkpoint.pt")
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert set(raw) == {"done", "phase", "epoch", "history", "student", "optimizer", "scheduler", "teacher_cache",
                        "compile", "rescues", "judged"}
    back = TrainState.load(tmp_path / "checkpoint.pt", torch.device("cpu"))
    assert back.resumes("distill") and not back.resumes("baseline")
    assert back.epoch == 1 and back.history == s.history and back.phase_info() == {"teacher_cache": "built",
                                                                                     "compile": "off"}
    assert torch.equal(back.model["weight"], model.weight)
    assert back.steps_done(10, 5, ["distill", "baseline"]) == 5
    back.finish("distill", {"top1": 0.8})
    assert back.to_dict() == {"done": {"teacher": {"top1": 0.9}, "distill": {"top1": 0.8}}}
    assert back.steps_done(10, 5, ["distill", "baseline"]) == 10
    assert TrainState.load(tmp_path / "none.pt", torch.device("cpu")) == TrainState()
