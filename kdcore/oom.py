"""CUDA out of memory: retry a whole run once with half the batch size, then fail clearly.

A batch that does not fit is the usual cause, and halving it is the one change that is safe to make
for the user: the recipe stays the same otherwise. The run restarts from its beginning at the smaller
batch size (an epoch checkpoint from the larger one counts steps differently and is dropped by the
caller). A second out-of-memory error fails with `cuda_oom` and says what to change.
"""
from __future__ import annotations

import gc
from collections.abc import Callable
from typing import TypeVar

import torch

from kdcore.errors import OutOfMemory

T = TypeVar("T")


def free_cuda_memory() -> None:
    gc.collect()  # the failed run's tensors are reachable only from garbage cycles (frames, autograd graph)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def with_oom_retry(train: Callable[[int], T], batch_size: int,
                   on_retry: Callable[[int, int], None] = lambda old, new: None) -> T:
    """`train(batch_size)`; on torch.OutOfMemoryError, `on_retry(batch_size, half)` and `train(half)`
    once. Raises OutOfMemory when that fails too (or the batch cannot be halved)."""
    smaller = batch_size // 2
    try:
        return train(batch_size)
    except torch.OutOfMemoryError as e:
        if smaller < 1:
            raise OutOfMemory(f"CUDA out of memory at batch size {batch_size}, which cannot be halved; use a "
                              f"smaller student or teacher, or precision bf16 ({_first_line(e)})") from e
        first = _first_line(e)
    free_cuda_memory()  # outside the except block, whose traceback would keep the failed run's tensors alive
    on_retry(batch_size, smaller)
    try:
        return train(smaller)
    except torch.OutOfMemoryError as e:
        raise OutOfMemory(f"CUDA out of memory at training.batch_size {batch_size} ({first}) and again at "
                          f"{smaller}; lower training.batch_size further, use a smaller student or teacher, or "
                          f"precision bf16 ({_first_line(e)})") from e
    finally:
        free_cuda_memory()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
