"""Test-split evaluation: top-1, top-5 and predictions, batched, without gradients, over a split of any
kind (tensors in memory or a prepared store read chunk by chunk: kdcore.datasets.base.Split)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.datasets.base import Split
from kdcore.hardware import infer_batch_size

EVAL_BATCH = 1024  # at most; large images get fewer per batch (kdcore.hardware.infer_batch_size)


@torch.inference_mode()
def predict(model: Callable[[torch.Tensor], torch.Tensor], x: Split, device: torch.device,
            precision: str = "fp32", batch_size: int | None = None) -> torch.Tensor:
    """Logits for all of the split x (float32, on device). nn.Modules are put in eval mode and restored after."""
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    outs = []
    if batch_size is None:
        batch_size = min(EVAL_BATCH, infer_batch_size(int(x.head(1)[0].numel()) if len(x) else 1, device))
    try:
        for xb in x.chunks(batch_size):
            xb = xb.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                outs.append(model(xb).float())
    finally:
        if was_training:
            model.train()
    return torch.cat(outs)


def topk_accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float | None]:
    """Top-1 and top-5 as fractions; top-5 is None below 10 classes, where it says little."""
    top1 = (logits.argmax(1) == y).float().mean().item()
    if logits.shape[1] < 10:
        return top1, None
    top5 = (logits.topk(5, dim=1).indices == y[:, None]).any(1).float().mean().item()
    return top1, top5


def evaluate(model: Callable[[torch.Tensor], torch.Tensor], split: Split, device: torch.device,
             precision: str = "fp32") -> dict[str, Any]:
    return score(predict(model, split, device, precision), split.labels)


def score(logits: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """top-1, top-5, loss and predictions of logits already computed (e.g. a teacher's, from its cache)."""
    logits = logits.float()
    y = y.to(logits.device)
    top1, top5 = topk_accuracy(logits, y)
    return {"top1": round(top1, 6), "top5": None if top5 is None else round(top5, 6),
            "loss": round(F.cross_entropy(logits, y).item(), 6), "preds": logits.argmax(1)}
