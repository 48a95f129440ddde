"""`dml`: two students learn from each other without a teacher; the peer is built by the method from its
params through the job's model factory, and comes back to the loop as an extra student (saved, reported)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from kdcore.checkpoints import load_student
from kdcore.losses import hard_loss
from kdcore.methods import METHODS, Distiller, ModelFactory
from kdcore.spec import JobSpec
from kdcore.train import run


def test_dml_students_learn_from_each_other_without_a_teacher(make: Callable[..., Distiller]) -> None:
    d = make("dml")
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 0])
    d.eval()
    _, terms = d.forward_train(x, y, 0.0)
    with torch.no_grad():
        z1, z2 = d.student(x), d.peer(x)
        kl12 = F.kl_div(F.log_softmax(z1 / 2, 1), F.log_softmax(z2 / 2, 1), reduction="batchmean", log_target=True)
        kl21 = F.kl_div(F.log_softmax(z2 / 2, 1), F.log_softmax(z1 / 2, 1), reduction="batchmean", log_target=True)
    assert terms["soft"].item() == pytest.approx(0.7 * 4 * kl12.item(), rel=1e-5)
    assert terms["peer_soft"].item() == pytest.approx(0.7 * 4 * kl21.item(), rel=1e-5)
    assert torch.equal(terms["hard"], hard_loss(z1, y, 0.7)) and torch.equal(terms["peer_hard"], hard_loss(z2, y, 0.7))
    assert set(terms) == {"hard", "soft", "peer_hard", "peer_soft"}


@pytest.mark.parametrize("params,want", [
    ({}, ("mlp", {"hidden": [16]})),  # the student's own architecture and kwargs
    ({"peer_architecture": "lenet5"}, ("lenet5", {})),
    ({"peer_architecture": "mlp", "peer_kwargs": {"hidden": [8]}}, ("mlp", {"hidden": [8]})),
])
def test_the_peer_is_built_from_params_with_the_model_factory(tiny: type, params: dict[str, Any],
                                                              want: tuple[str, dict[str, Any]]) -> None:
    built: list[tuple[str, dict[str, Any]]] = []

    def build(arch: str, kwargs: dict[str, Any]) -> torch.nn.Module:
        built.append((arch, kwargs))
        return tiny(4, 3)

    d = METHODS.create("dml", tiny(4, 1), [], 1.0, 0.5, params, models=ModelFactory("mlp", {"hidden": [16]}, build))
    assert built == [want]
    extra = d.extra_students()["peer"]
    assert extra.module is d.peer and (extra.architecture, extra.kwargs) == want
    with pytest.raises(ValueError, match="model factory"):
        METHODS.create("dml", tiny(4, 1), [], 1.0, 0.5, params)


def test_dml_peer_in_the_report_and_its_file(digits, tmp_path: Path) -> None:
    dml = JobSpec.model_validate({
        "student": {"architecture": "mlp", "kwargs": {"hidden": [64]}}, "dataset": {"name": "digits"},
        "distillation": {"method": "dml", "alpha": 0.5, "temperature": 1.0,
                         "params": {"peer_architecture": "lenet5"}},
        # 3 epochs: the peer (a lenet5 on 8x8 digits) trains on the 90 % left after the validation split
        "training": {"epochs": 3, "batch_size": 64, "lr": 0.05}, "baseline": True})
    rep = run(dml, digits, [], tmp_path / "dml")
    assert rep["peer"]["architecture"] == "lenet5" and rep["peer"]["top1"] > 0.3
    assert set(rep["peer"]) == {"architecture", "top1", "top5", "params", "size_bytes"}
    assert (tmp_path / "dml" / "peer.safetensors").is_file() and "kd_gain" in rep
    peer, meta = load_student(tmp_path / "dml" / "peer.safetensors")
    assert meta["architecture"] == "lenet5" and sum(p.numel() for p in peer.parameters()) == rep["peer"]["params"]
