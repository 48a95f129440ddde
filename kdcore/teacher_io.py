"""The teacher path's own input and output: `TeacherIO` wraps a loaded teacher so that every caller (the
teacher-output cache, the per-step teacher, its evaluation, feature hooks) runs it the same way.

- Input (`teacher.input`): the dataset's batch, normalized with the dataset's mean/std, is turned back
  into pixels in [0, 1], converted between 1 and 3 channels (repeat / BT.601 luminance), resized
  bilinearly to the teacher's [H, W] and normalized with the teacher's mean/std. Without mean/std the
  dataset's own are kept (repeated for 1 -> 3, luminance-weighted for 3 -> 1), so a teacher trained on the
  same normalization at another size needs only `size`. The student never sees any of this.
- Output (`teacher.outputs`): logits as they are; log-probabilities in float32 (valid logits: softmax
  gives the same distribution back); probabilities turned into log-probabilities in float32 (a bf16
  softmax output has lost precision already; the log must not lose more).
- Failure: whatever the teacher's runtime raises (an onnxruntime error, a .pt2 guard, a shape error)
  becomes JobError("teacher_error") with the runtime's message and the shape the teacher was given, so a
  job never fails as `internal` because of a teacher; CUDA out-of-memory stays itself (the loop retries).
"""
from __future__ import annotations

import json
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.batching import Limits, batch_limits
from kdcore.datasets.base import DatasetInfo
from kdcore.errors import JobError
from kdcore.features import hook_root
from kdcore.spec import TeacherInput

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")
_TINY = torch.finfo(torch.float32).tiny


def _short(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    first = lines[0][:400] if lines else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _per_channel(values: list[float] | tuple[float, ...], channels: int, what: str) -> torch.Tensor:
    if len(values) not in (1, channels):
        raise JobError("teacher_error", f"teacher.input.{what} has {len(values)} values but the teacher takes "
                       f"{channels} channels; give one value per channel, or one for all")
    return torch.tensor([float(v) for v in values] * (channels if len(values) == 1 else 1)).view(1, -1, 1, 1)


def _convert(t: torch.Tensor, channels: int) -> torch.Tensor:
    """Per-channel statistics [1, C, 1, 1] (or pixels [B, C, H, W]) to `channels` channels."""
    if t.shape[1] == channels:
        return t
    if channels == 3 and t.shape[1] == 1:
        return t.expand(-1, 3, -1, -1)
    if channels == 1 and t.shape[1] == 3:
        return (t * t.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    raise JobError("teacher_error", f"teacher.input.channels converts between 1 and 3 channels, not from "
                   f"{t.shape[1]} to {channels}")


class TeacherIO(nn.Module):
    """A loaded teacher with its input adapter and output conversion; see the module docstring."""

    def __init__(self, inner: nn.Module, info: DatasetInfo, adapter: TeacherInput | None = None,
                 outputs: str = "logits", label: str = "teacher"):
        super().__init__()
        self.inner, self.outputs, self.label = inner, outputs, label
        self.adapter = adapter or TeacherInput()
        a = self.adapter
        self.channels = a.channels or info.in_channels
        self.size = tuple(a.size) if a.size else tuple(info.image_size)
        self.adapts = (self.channels != info.in_channels or self.size != tuple(info.image_size)
                       or a.mean is not None)
        d_mean = _per_channel(info.mean or (0.0,), info.in_channels, "mean")
        d_std = _per_channel(info.std or (1.0,), info.in_channels, "std")
        t_mean = _per_channel(a.mean, self.channels, "mean") if a.mean is not None else _convert(d_mean, self.channels)
        t_std = _per_channel(a.std, self.channels, "std") if a.std is not None else _convert(d_std, self.channels)
        # buffers, so that .to(device) moves them; not persistent: they are no weights of the teacher
        for name, value in (("d_mean", d_mean), ("d_std", d_std), ("t_mean", t_mean), ("t_std", t_std)):
            self.register_buffer(name, value.contiguous(), persistent=False)

    def identity(self) -> str:
        """What this path does besides the teacher itself, for the teacher-output cache key ("" for nothing)."""
        parts: dict[str, Any] = {}
        if self.adapts:
            parts["input"] = {"size": list(self.size), "channels": self.channels,
                              "mean": self.t_mean.flatten().tolist(), "std": self.t_std.flatten().tolist()}
        if self.outputs != "logits":
            parts["outputs"] = self.outputs
        return json.dumps(parts, sort_keys=True) if parts else ""

    @property
    def batch_limits(self) -> Limits:
        return batch_limits(self.inner)

    def feature_root(self) -> nn.Module:
        return hook_root(self.inner)  # layer paths are the teacher's own

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """The dataset's normalized batch as this teacher takes it."""
        if not self.adapts:
            return x
        pixels = _convert(x.float() * self.d_std + self.d_mean, self.channels)
        if tuple(pixels.shape[-2:]) != self.size:
            shrink = pixels.shape[-2] > self.size[0] or pixels.shape[-1] > self.size[1]
            pixels = F.interpolate(pixels, size=self.size, mode="bilinear", align_corners=False, antialias=shrink)
        return (pixels - self.t_mean) / self.t_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        given = None
        try:
            given = self.adapt(x)
            out = self.inner(given)
        except (JobError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as e:  # the runtime's own error; its message is what the user can act on
            shape = tuple(given.shape) if given is not None else tuple(x.shape)
            raise JobError("teacher_error", f"{self.label} failed on a batch of shape {shape} "
                           f"({given.dtype if given is not None else x.dtype}): {_short(e)}") from e
        if not isinstance(out, torch.Tensor):
            raise JobError("teacher_error", f"{self.label} returned {type(out).__name__}, not a tensor of logits")
        if self.outputs == "probs":
            return torch.log(out.float().clamp_min(_TINY))
        return out.float() if self.outputs == "log_probs" else out


def dry_run(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The teacher on one sample, before anything else of the job runs: a teacher that cannot run fails the
    job at once with its runtime's message (JobError "teacher_error" from TeacherIO)."""
    with torch.inference_mode():
        return teacher(x[:1])
