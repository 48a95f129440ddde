"""CUDA out of memory: the retry policy (once at half the batch size, then a clear failure), driven by a
real module whose forward raises torch.OutOfMemoryError above a batch size, and on a GPU by a real one."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from kdcore.oom import OutOfMemory, with_oom_retry


def _model_that_fits(max_batch: int) -> nn.Module:
    """A real module whose forward runs out of "memory" for batches larger than max_batch."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

    def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if args[0].shape[0] > max_batch:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {args[0].shape[0] * 64} MiB")

    model[0].register_forward_pre_hook(hook)
    return model


def _trainer(model: nn.Module, calls: list[int]):
    def train(batch_size: int) -> float:
        calls.append(batch_size)
        x, y = torch.randn(batch_size, 8), torch.randint(0, 3, (batch_size,))
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return float(loss)
    return train


def test_retries_once_with_half_the_batch() -> None:
    calls: list[int] = []
    retries: list[tuple[int, int]] = []
    loss = with_oom_retry(_trainer(_model_that_fits(32), calls), 64, lambda old, new: retries.append((old, new)))
    assert calls == [64, 32] and retries == [(64, 32)] and loss > 0


def test_no_retry_when_the_batch_fits() -> None:
    calls: list[int] = []
    with_oom_retry(_trainer(_model_that_fits(64), calls), 64)
    assert calls == [64]


def test_fails_clearly_after_the_second_out_of_memory() -> None:
    calls: list[int] = []
    with pytest.raises(OutOfMemory) as e:
        with_oom_retry(_trainer(_model_that_fits(16), calls), 64)
    assert calls == [64, 32]  # one retry, not a halving loop
    msg = str(e.value)
    assert "batch_size 64" in msg and "again at 32" in msg and "lower training.batch_size" in msg
    assert isinstance(e.value.__cause__, torch.OutOfMemoryError)


def test_batch_of_one_cannot_be_halved() -> None:
    calls: list[int] = []
    with pytest.raises(OutOfMemory, match="cannot be halved"):
        with_oom_retry(_trainer(_model_that_fits(0), calls), 1)
    assert calls == [1]


def test_other_errors_pass_through_untouched() -> None:
    def train(batch_size: int) -> None:
        raise ValueError("not memory")
    with pytest.raises(ValueError, match="not memory"):
        with_oom_retry(train, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_out_of_memory_is_retried_with_half_the_batch() -> None:
    free, _ = torch.cuda.mem_get_info()
    per_sample = int(free * 0.7) // 32  # 64 samples need 1.4x the free memory, 32 need 0.7x
    calls: list[int] = []

    def train(batch_size: int) -> int:
        calls.append(batch_size)
        buf = torch.empty(batch_size * per_sample, dtype=torch.uint8, device="cuda")
        return buf.numel()

    assert with_oom_retry(train, 64) == 32 * per_sample and calls == [64, 32]
    with pytest.raises(OutOfMemory):
        with_oom_retry(lambda bs: torch.empty(bs * free, dtype=torch.uint8, device="cuda").numel(), 64)
