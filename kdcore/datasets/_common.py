"""Helpers shared by the loaders: turning raw pixel arrays into normalized tensors."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .base import DatasetInfo, TensorData


def normalize(
    x: np.ndarray, max_value: float, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """(x / max_value - mean) / std per channel, as a float32 NCHW tensor; ``x`` must be NCHW already.

    Works in place on one float32 copy so that a 50 000-image CIFAR split needs one tensor's worth of
    memory, not three.
    """
    t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32)
    if max_value != 1.0:
        t.div_(max_value)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return t.sub_(m).div_(s)


def labels(y: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(y).astype(np.int64, copy=False))


class ChannelStats:
    """Per-channel mean and (population) std of x / max_value, accumulated over NCHW chunks in float64 (one
    float64 copy of a large upload would need eight times its size in memory)."""

    def __init__(self, channels: int, max_value: float):
        self.max_value = max_value
        self.total = np.zeros(channels, dtype=np.float64)
        self.total_sq = np.zeros(channels, dtype=np.float64)
        self.count = 0

    def add(self, x: np.ndarray) -> None:
        part = x.astype(np.float64)  # one float64 copy, worked on in place
        part /= self.max_value
        flat = part.reshape(part.shape[0], part.shape[1], -1)
        self.total += flat.sum(axis=2).sum(axis=0)
        self.total_sq += np.square(flat, out=flat).sum(axis=2).sum(axis=0)
        self.count += part.shape[0] * part.shape[2] * part.shape[3]

    def result(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel; a constant channel gets std 1 so normalization never divides by zero."""
        c = self.total.shape[0]
        if self.count == 0:
            return tuple([0.0] * c), tuple([1.0] * c)
        mean = self.total / self.count
        var = np.maximum(self.total_sq / self.count - np.square(mean), 0.0)
        # rounded like the built-in constants; a (near-)constant channel would round to 0
        stds = tuple(round(float(v), 4) or 1.0 for v in np.sqrt(var))
        return tuple(round(float(v), 4) for v in mean), stds


def channel_stats(
    x: np.ndarray, max_value: float, chunk: int = 4096
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of x / max_value for an NCHW array, over chunks of samples."""
    stats = ChannelStats(x.shape[1], max_value)
    for start in range(0, x.shape[0], chunk):
        stats.add(x[start : start + chunk])
    return stats.result()


def make_data(
    info: DatasetInfo,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    max_value: float,
) -> TensorData:
    """Normalize both splits with ``info``'s mean/std and record the actual split sizes in the info."""
    info = dataclasses.replace(info, train_size=int(x_train.shape[0]), test_size=int(x_test.shape[0]))
    return TensorData(
        info,
        normalize(x_train, max_value, info.mean, info.std),
        labels(y_train),
        normalize(x_test, max_value, info.mean, info.std),
        labels(y_test),
    )
