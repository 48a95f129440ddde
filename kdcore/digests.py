"""Content digests that name data and weights in cache keys (kdcore.teacher_cache, kdcore.datasets)."""
from __future__ import annotations

import hashlib
from pathlib import Path

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


def file_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):  # noqa: B023
                h.update(block)
    return h.hexdigest()
