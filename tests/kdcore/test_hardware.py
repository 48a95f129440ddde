"""Device, precision and threads come in as arguments: kdcore reads none of the service's settings."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from kdcore import hardware
from kdcore.errors import JobError
from kdcore.hardware import resolve_device, resolve_precision, resolve_teacher_precision, set_threads


@pytest.fixture
def restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_device_cpu_and_auto_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_WORKER_DEVICE", "cuda:1")  # ignored: the worker passes its device as `pinned`
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("auto", "cuda:1") == torch.device("cpu")
    with pytest.raises(JobError) as e:
        resolve_device("cuda", "cuda:1")
    assert e.value.code == "no_cuda"


def test_a_pinned_cuda_device_is_used_when_cuda_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_WORKER_DEVICE", "cuda:3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("cuda", "cuda:1") == torch.device("cuda:1")
    assert resolve_device("auto", "cuda:1") == torch.device("cuda:1")
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("auto", "cpu") == torch.device("cuda")  # a pin that is not CUDA: the default GPU
    assert resolve_device("cpu", "cuda:1") == torch.device("cpu")  # the job asked for the CPU


def test_threads_exactly_as_asked_or_capped_at_the_cpu_quota(restore_threads: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KD_TORCH_THREADS", "7")  # ignored: the worker passes its count as `threads`
    assert set_threads(1) == 1 == torch.get_num_threads()
    torch.set_num_threads(64)
    monkeypatch.setattr(hardware, "cpu_quota", lambda: 2)
    assert set_threads(None) == 2
    torch.set_num_threads(1)
    assert set_threads(None) == 1  # the cap only lowers
    assert set_threads(3) == 3
    with pytest.raises(ValueError):
        set_threads(-1)


def test_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("bf16", cpu) == "bf16" and resolve_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)
    assert resolve_teacher_precision("auto", cpu, "fp32") == "bf16"
    assert resolve_teacher_precision("fp32", cpu, "fp32") == "fp32"
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    assert resolve_teacher_precision("auto", cpu, "fp32") == "fp32"


def test_channels_last_is_for_conv_students_on_image_batches() -> None:
    from torch import nn

    from kdcore import hardware
    from kdcore.models import create_model

    conv = create_model("cifar_resnet20", num_classes=10, in_channels=3, input_size=(32, 32))
    mlp = create_model("mlp", num_classes=10, in_channels=3, input_size=(32, 32), hidden=[8])
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert hardware.use_channels_last(cuda, conv, 4) and not hardware.use_channels_last(cuda, mlp, 4)
    assert hardware.use_channels_last(cpu, conv, 4) == hardware.CPU_CHANNELS_LAST  # the measured choice
    assert not hardware.use_channels_last(cpu, mlp, 4) and not hardware.use_channels_last(cpu, nn.Linear(2, 2), 2)
    assert not hardware.use_channels_last(cuda, conv, 2)  # not an image batch
