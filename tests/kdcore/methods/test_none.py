"""`none`: plain cross-entropy on the labels, no teacher, no temperature or alpha."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdcore.methods import METHODS


def test_supervised_is_plain_cross_entropy(tiny: type) -> None:
    d = METHODS.create("none", tiny(4, 1), [], 4.0, 0.9, {})
    x, y = torch.randn(3, 1, 6, 6), torch.tensor([0, 1, 2])
    d.eval()
    z, terms = d.forward_train(x, y, 0.0)
    assert set(terms) == {"ce"} and not d.distills and d.teachers == []
    assert terms["ce"].item() == F.cross_entropy(d.student(x), y).item()
    assert torch.equal(z, d.student(x))
