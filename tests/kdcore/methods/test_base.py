"""What every method owes the loop: gradients reach only the student (and the method's own modules), the
teachers stay in eval mode and unchanged; and the catalog the API serves."""
from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch

from kdcore.methods import METHODS, Distiller, method_catalog


@pytest.mark.parametrize("method,teachers", [("kd", 1), ("kd", 2), ("dkd", 1), ("dkd", 2), ("fitnets", 1),
                                             ("at", 1), ("dml", 0), ("none", 0)])
def test_gradients_reach_only_the_student_and_the_teacher_stays_frozen(make: Callable[..., Distiller], method: str,
                                                                       teachers: int) -> None:
    d = make(method, teachers=teachers)
    before = [copy.deepcopy(t.state_dict()) for t in d.teachers]
    d.train()
    x, y = torch.randn(5, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    z, terms = d.forward_train(x, y, 2.0)
    assert z.shape == (5, 3) and terms and all(v.ndim == 0 and torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    for t, sd in zip(d.teachers, before, strict=True):
        assert not t.training  # eval mode: batch-norm statistics untouched
        assert all(p.grad is None and not p.requires_grad for p in t.parameters())
        after = t.state_dict()
        assert all(torch.equal(sd[k], after[k]) for k in sd)  # running stats included
    trainable = d.trainable_parameters()
    assert trainable and all(p.grad is not None for p in d.student.parameters())
    assert {id(p) for p in trainable} == {id(p) for p in d.parameters()}  # no teacher weight among them
    if method == "fitnets":
        assert all(p.grad is not None for p in d.regressors.parameters())
    if method == "dml":
        assert all(p.grad is not None for p in d.peer.parameters())


def test_the_loop_facing_interface_is_the_same_for_every_method(make: Callable[..., Distiller]) -> None:
    for name in METHODS.names():
        d = make(name, teachers=0 if not METHODS.get(name).meta["needs_teacher"] else 1)
        assert isinstance(d, Distiller)
        assert d.distills == (name != "none")  # T and alpha apply to every method but training on labels
        assert set(d.extra_students()) == ({"peer"} if name == "dml" else set())


def test_joint_teacher_logits_are_one_teachers_or_the_weighted_ensembles(tiny: type) -> None:
    t1, t2 = tiny(8, 1), tiny(8, 2)
    x = torch.randn(3, 1, 6, 6)
    one = Distiller(torch.nn.Identity(), [t1], 4.0, 0.9, {})
    assert torch.equal(one.teacher_logits(x), t1.eval()(x))
    two = Distiller(torch.nn.Identity(), [t1, t2], 4.0, 0.9, {}, teacher_weights=[3.0, 1.0])
    want = (0.75 * t1(x).softmax(1) + 0.25 * t2.eval()(x).softmax(1)).log()
    torch.testing.assert_close(two.teacher_logits(x), want, rtol=1e-5, atol=1e-6)


def test_catalog_lists_every_method_with_its_parameter_schema() -> None:
    cat = {m["name"]: m for m in method_catalog()}
    assert {"none", "kd", "dkd", "fitnets", "at", "dml"} <= set(cat)
    assert set(cat["dkd"]["params"]["properties"]) == {"alpha", "beta", "warmup_epochs"}
    assert "pairs" in cat["fitnets"]["params"]["properties"] and not cat["fitnets"]["logits_only"]
    assert cat["kd"]["multi_teacher"] and not cat["dml"]["needs_teacher"]
    assert all(m["paper"] for name, m in cat.items() if name != "none")
