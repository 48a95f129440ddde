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
