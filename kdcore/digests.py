"""Content digests that name data and weights in cache keys (kdcore.teacher_cache, kdcore.datasets)."""
from __future__ import annotations

import hashlib

import torch


def tensor_digest(x: torch.Tensor) -> str:
    """sha256 over a tensor's dtype, shape and bytes (about 1 GB/s; MNIST's train split in ~0.2 s)."""
    t = x.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()
