"""The split interface the loop reads every dataset through (kdcore.datasets.base), as tensors in memory."""
from __future__ import annotations

import torch

from kdcore.datasets import DatasetInfo, TensorData
from kdcore.digests import tensor_digest


def _data(n: int = 10) -> TensorData:
    info = DatasetInfo("t", 2, 1, (2, 2), (0.0,), (1.0,), ("a", "b"))
    x = torch.arange(n * 4, dtype=torch.float32).reshape(n, 1, 2, 2)
    return TensorData(info, x, torch.arange(n) % 2, x[:3] + 100, torch.tensor([0, 1, 0]))


def test_batch_head_and_labels_follow_the_indices() -> None:
    data = _data()
    idx = torch.tensor([7, 2, 2, 9])
    assert torch.equal(data.train.batch(idx), data.x_train[idx]) and len(data.train) == 10
    assert torch.equal(data.train.head(3), data.x_train[:3]) and torch.equal(data.train.labels, data.y_train)
    assert len(data.test) == 3 and torch.equal(data.test.labels, data.y_test)


def test_chunks_cover_the_split_in_order_and_batches_follow_the_order() -> None:
    data = _data()
    assert torch.equal(torch.cat(list(data.train.chunks(4))), data.x_train)
    assert [len(c) for c in data.train.chunks(4)] == [4, 4, 2]
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    got = list(data.train.batches(order, 3, steps=3))  # an epoch of 3 steps leaves the last sample out
    assert len(got) == 3 and torch.equal(torch.cat(got), data.x_train[order[:9]])


def test_digest_names_the_content_and_is_computed_once() -> None:
    data = _data()
    assert data.train is data.train and data.train.digest() == tensor_digest(data.x_train)
    assert data.train.digest() != data.test.digest()
    assert _data().train.digest() == data.train.digest()


def test_a_held_out_subset_reads_its_rows_in_memory_and_from_disk(tmp_path) -> None:
    from kdcore.datasets.base import HeldOutData
    from kdcore.datasets.store import PreparedStore

    from .conftest import make_zip

    disk = PreparedStore(tmp_path / "store").prepare(make_zip(tmp_path / "pets.zip"), workers=0)
    for data in (_data(40), disk):
        n = len(data.train)
        held = HeldOutData.hold_out(data, n // 4, seed=1)
        rows_t, rows_v = held.train.rows, held.val.rows
        assert len(held.train) + len(held.val) == n and len(held.val) == n // 4
        assert torch.equal(held.train.labels, data.train.labels[rows_t])
        assert torch.equal(held.val.head(3), data.train.batch(rows_v[:3]))
        idx = torch.tensor([4, 0, 4])
        assert torch.equal(held.train.batch(idx), data.train.batch(rows_t[idx]))
        assert torch.equal(torch.cat(list(held.val.chunks(4))), data.train.batch(rows_v))
        order = torch.arange(len(held.train)).flip(0)
        got = torch.cat(list(held.train.batches(order, 4, steps=2)))
        assert torch.equal(got, data.train.batch(rows_t[order[:8]]))
        # the teacher cache keys the subset apart from the whole split and from the other subset
        assert len({held.train.digest(), held.val.digest(), data.train.digest()}) == 3
        assert held.test is data.test and held.info is data.info
