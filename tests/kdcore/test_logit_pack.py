"""The teacher-output cache's logit formats (kdcore/logit_pack.py) and the cache taking each path within its
byte budget (kdcore/teacher_cache.py): fp32, bf16, top-k + rest mass (k the largest that fits), off."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from kdcore.datasets.base import TensorSplit
from kdcore.logit_pack import BF16, FP32, TOPK_MIN, TOPK_MIN_CLASSES, LogitPack, LogitsFormat, choose_format
from kdcore.methods import METHODS
from kdcore.teacher_cache import BUILT, HIT, OFF_LOGITS, PackedOutput, TeacherCache


def test_choose_format_takes_the_first_that_fits_and_the_largest_k() -> None:
    rows, c = 1000, 100  # fp32: 400,000 bytes; bf16: 200,000; top-k: 4k + 4 per row
    assert choose_format(rows, c, 400_000) == FP32
    assert choose_format(rows, c, 399_999) == BF16 and choose_format(rows, c, 200_000) == BF16
    fmt = choose_format(rows, c, 150_000)
    assert fmt is not None and fmt.kind == "topk" and fmt.k == (150 - 4) // 4
    assert rows * fmt.bytes_per_row(c) <= 150_000 < rows * LogitsFormat("topk", fmt.k + 1).bytes_per_row(c)
    assert choose_format(rows, c, rows * (4 * TOPK_MIN + 4)) == LogitsFormat("topk", TOPK_MIN)
    assert choose_format(rows, c, rows * (4 * TOPK_MIN + 4) - 1) is None  # too few logits left to be worth it
    assert choose_format(rows, TOPK_MIN_CLASSES - 1, 2 * rows * (TOPK_MIN_CLASSES - 1) - 1) is None  # too few
    assert choose_format(rows, c, 150_000, topk_allowed=False) is None
    big = choose_format(rows, 40_000, rows * 600)  # past 32,767 classes the indices take int32
    assert big is not None and big.k == (600 - 4) // 6
    assert [f.describe(100) for f in (FP32, BF16, fmt)] == ["fp32 logits", "bf16 logits",
                                                            f"top-{fmt.k} of 100 logits + rest mass"]


def _logits(k: int = 2, n: int = 64, c: int = 100) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(k, n, c, generator=g) * 3


def test_fp32_and_bf16_packs_read_back_the_logits() -> None:
    z = _logits()
    idx = torch.tensor([5, 0, 63, 5])
    for fmt, tol in ((FP32, 0.0), (BF16, 2**-8)):
        pack = LogitPack.empty(fmt, 2, 64, 100, torch.device("cpu"))
        pack.put(0, z[:, :40])
        pack.put(40, z[:, 40:])
        got = pack.rows(idx)
        assert got.dtype == torch.float32 and got.shape == (2, 4, 100)
        torch.testing.assert_close(got, z[:, idx], rtol=tol, atol=0.0)
        assert pack.nbytes == 2 * 64 * fmt.bytes_per_row(100)


def test_top_k_keeps_the_top_logits_and_the_rest_s_mass_exactly_at_t1() -> None:
    z = _logits()
    fmt = LogitsFormat("topk", 10)
    pack = LogitPack.empty(fmt, 2, 64, 100, torch.device("cpu"))
    pack.put(0, z)
    assert pack.nbytes == 2 * 64 * fmt.bytes_per_row(100) == 2 * 64 * 44
    got = pack.rows(torch.arange(64))
    top = z.topk(10, dim=-1).indices
    torch.testing.assert_close(got.gather(-1, top), z.gather(-1, top), rtol=2**-8, atol=0.0)  # bf16 values
    p, q = z.softmax(-1), got.softmax(-1)
    rest = torch.ones_like(p, dtype=torch.bool).scatter_(-1, top, False)
    torch.testing.assert_close((q * rest).sum(-1), (p * rest).sum(-1), rtol=0.02, atol=1e-6)  # the tail's mass
    # the top classes' shares, as far as bf16 values (|z| <~ 10: within 0.04) carry them
    torch.testing.assert_close(q.gather(-1, top), p.gather(-1, top), rtol=0.06, atol=1e-6)
    assert torch.equal(got.argmax(-1), z.argmax(-1))
    # every other class holds one flat value, below the smallest kept logit
    others = got.masked_select(rest).view(2, 64, 90)
    assert torch.equal(others, others[..., :1].expand_as(others))
    assert bool((others[..., 0] < got.gather(-1, top).min(-1).values).all())
    # a tail whose mass underflows still reads back finite
    sharp = torch.zeros(1, 1, 100)
    sharp[0, 0, 3] = 500.0
    one = LogitPack.empty(fmt, 1, 1, 100, torch.device("cpu"))
    one.put(0, sharp)
    assert bool(one.rows(torch.tensor([0])).isfinite().all())


class _Linear(nn.Module):
    """A 100-class teacher on 8x8 grayscale inputs (fixed weights: its outputs are what they are)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 100)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(100, 64, generator=torch.Generator().manual_seed(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.mark.parametrize(("budget", "expect"), [(None, "fp32 logits"), (200 * 400 - 1, "bf16 logits"),
                                                (200 * 110, "top-26 of 100 logits + rest mass"),
                                                (200 * 60, OFF_LOGITS)])
def test_the_cache_takes_each_path_within_its_budget(tmp_path: Path, budget: int | None, expect: str) -> None:
    x = TensorSplit(torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(2)), torch.zeros(200).long())
    teacher = _Linear().eval()
    distiller = METHODS.create("kd", nn.Identity(), [teacher], 4.0, 0.9, {})
    cache = TeacherCache(tmp_path, budget if budget is not None else 10**9)
    dev = torch.device("cpu")
    built = cache.outputs(distiller, x, ["t"], dev, "fp32")
    if expect == OFF_LOGITS:
        assert built.output is None and built.status == OFF_LOGITS  # never past the budget, and said so
        return
    assert built.status == f"{BUILT} ({expect})" and built.output is not None
    held = built.output.pack.nbytes if isinstance(built.output, PackedOutput) else built.output.logits.nbytes
    assert held <= cache.max_bytes
    again = cache.outputs(distiller, x, ["t"], dev, "fp32")  # read back from the entry on disk
    assert again.status == f"{HIT} ({expect})" and again.key == built.key
    idx = torch.tensor([3, 199, 0])
    torch.testing.assert_close(again.output.index(idx).logits, built.output.index(idx).logits)
    with torch.no_grad():
        exact = teacher(x.x[idx]).unsqueeze(0)
    rows = built.output.index(idx).logits
    assert rows.dtype == torch.float32 and torch.equal(rows.argmax(-1), exact.argmax(-1))
    if expect.startswith("fp32"):
        torch.testing.assert_close(rows, exact)
