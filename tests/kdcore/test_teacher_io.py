"""kdcore.teacher_io: the teacher path's input adapter (teacher.input), output conversion
(teacher.outputs) and runtime failures as `teacher_error`, checked against the same steps done by hand."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.datasets.base import DatasetInfo
from kdcore.errors import JobError
from kdcore.spec import TeacherInput
from kdcore.teacher_cache import Teacher
from kdcore.teacher_io import LUMA, TeacherIO, dry_run

GREY = DatasetInfo(name="grey", num_classes=10, in_channels=1, image_size=(8, 8), mean=(0.1307,), std=(0.3081,),
                   class_names=tuple(str(i) for i in range(10)))
RGB = DatasetInfo(name="rgb", num_classes=10, in_channels=3, image_size=(8, 8), mean=(0.4, 0.5, 0.6),
                  std=(0.2, 0.25, 0.3), class_names=tuple(str(i) for i in range(10)))


class _Seen(nn.Module):
    """A teacher that keeps what it was given and answers with a fixed linear map of it."""

    def __init__(self, features: int, softmax: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.fc, self.softmax, self.seen = nn.Linear(features, 10), softmax, torch.empty(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen = x
        z = self.fc(x.flatten(1))
        return z.softmax(1) if self.softmax else z


def _pixels(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    return x * torch.tensor(info.std).view(1, -1, 1, 1) + torch.tensor(info.mean).view(1, -1, 1, 1)


def test_grey_dataset_to_a_larger_rgb_teacher_with_its_own_normalization() -> None:
    x = torch.randn(5, 1, 8, 8)
    inner = _Seen(3 * 12 * 12)
    t = TeacherIO(inner, GREY, TeacherInput(size=(12, 12), channels=3, mean=[0.5, 0.4, 0.3], std=[0.5]))
    t(x)
    want = F.interpolate(_pixels(x, GREY).repeat(1, 3, 1, 1), size=(12, 12), mode="bilinear", align_corners=False)
    want = (want - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / 0.5
    torch.testing.assert_close(inner.seen, want)


def test_rgb_to_grey_takes_the_luminance_and_keeps_the_datasets_normalization_by_default() -> None:
    x = torch.randn(4, 3, 8, 8)
    inner = _Seen(1 * 4 * 4)
    t = TeacherIO(inner, RGB, TeacherInput(size=(4, 4), channels=1))
    t(x)
    luma = torch.tensor(LUMA).view(1, 3, 1, 1)
    grey = (_pixels(x, RGB) * luma).sum(1, keepdim=True)
    grey = F.interpolate(grey, size=(4, 4), mode="bilinear", align_corners=False, antialias=True)
    mean, std = (torch.tensor(RGB.mean) * luma.flatten()).sum(), (torch.tensor(RGB.std) * luma.flatten()).sum()
    torch.testing.assert_close(inner.seen, (grey - mean) / std)


def test_size_alone_resizes_the_datasets_own_input() -> None:
    x = torch.randn(3, 1, 8, 8)
    inner = _Seen(16 * 16)
    TeacherIO(inner, GREY, TeacherInput(size=(16, 16)))(x)
    # the normalization is affine and bilinear resizing linear: the same as resizing the normalized input
    torch.testing.assert_close(inner.seen, F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False))


def test_no_adapter_passes_the_batch_unchanged_and_adds_nothing_to_the_identity() -> None:
    x = torch.randn(3, 1, 8, 8)
    inner = _Seen(64)
    t = TeacherIO(inner, GREY)
    torch.testing.assert_close(t(x), inner.fc(x.flatten(1)))
    assert inner.seen is x and t.identity() == ""


def test_outputs_probabilities_and_log_probabilities_become_log_probabilities_in_float32() -> None:
    x = torch.randn(6, 1, 8, 8)
    logits = _Seen(64)(x)
    probs = TeacherIO(_Seen(64, softmax=True), GREY, outputs="probs")(x)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, logits.log_softmax(1), atol=1e-5, rtol=0)
    # bf16 probabilities (a teacher under autocast): the log is taken in float32, finite where p underflowed
    half = TeacherIO(_Seen(64, softmax=True).to(torch.bfloat16), GREY, outputs="probs")(x.to(torch.bfloat16))
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half.argmax(1) == logits.argmax(1)).float().mean() > 0.8


def test_the_cache_identity_tells_adapters_and_outputs_apart() -> None:
    ids = set()
    for adapter, outputs in [(None, "logits"), (TeacherInput(size=(16, 16)), "logits"),
                             (TeacherInput(size=(16, 16), mean=[0.5], std=[0.5]), "logits"), (None, "probs")]:
        t = TeacherIO(_Seen(64), GREY, adapter, outputs)
        ids.add(Teacher(t, checksum="abc", io=t.identity()).cache_id())
    assert len(ids) == 4


def test_a_teacher_that_cannot_run_fails_as_teacher_error_with_the_runtimes_message() -> None:
    t = TeacherIO(_Seen(10 * 10), GREY, label="teacher")  # takes 10x10; the dataset gives 8x8
    with pytest.raises(JobError) as info:
        dry_run(t, torch.randn(4, 1, 8, 8))
    assert info.value.code == "teacher_error"
    assert "(1, 1, 8, 8)" in info.value.message and "RuntimeError" in info.value.message
    with pytest.raises(JobError, match="teacher.input.mean has 3 values"):
        TeacherIO(_Seen(64), GREY, TeacherInput(mean=[0.1, 0.2, 0.3], std=[1.0]))
