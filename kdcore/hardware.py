"""How a job uses the machine: device, precision, autocast, torch threads and torch.compile.

Hardware policy is kept apart from the loop so that the loop reads as training only. kdcore is a
library and reads none of the service's settings: the worker resolves the device it is pinned to and
the thread count it was configured with, and passes both in (`resolve_device(requested, pinned)`,
`set_threads(threads)`).
"""
from __future__ import annotations

import functools
import math
import os
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcore.errors import JobError


def resolve_device(requested: str, pinned: str | None = None) -> torch.device:
    """The device a job runs on. `requested` is the spec's resources.device (cpu, cuda or auto);
    `pinned` the worker's own device (e.g. "cuda:1" for a GPU worker started with --device), used
    whenever the job runs on CUDA. Raises JobError("no_cuda") for cuda on a machine without one."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device(pinned if pinned and pinned.startswith("cuda") else "cuda")
    if requested == "cuda":
        raise JobError("no_cuda", "resources.device is cuda but this worker has no CUDA device")
    return torch.device("cpu")


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    # On CPUs without AVX-512 BF16, bf16 matmul is orders of magnitude slower than fp32: auto means fp32.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 dot products (AVX-512 BF16 or AMX): there a bf16 matmul runs about twice
    as fast as fp32 (measured on an AMD EPYC with avx512_bf16: 195 against 83 GFLOP/s); elsewhere it is
    emulated and hundreds of times slower."""
    try:
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


# Conv students train with channels_last activations and weights on CPU as on CUDA (oneDNN's NHWC kernels):
# measured by benchmarks/conv_cpu.py, docs/benchmarks.md "Conv students on CPU". A module attribute, so that
# the benchmark can run the loop as it was (False) and as it is in one process.
CPU_CHANNELS_LAST = True


def use_channels_last(device: torch.device, student: nn.Module, sample_ndim: int) -> bool:
    """Whether the loop keeps the student and its batches in channels_last: a student with 2-D convolutions
    on image batches (N, C, H, W), on CUDA, and on CPU while CPU_CHANNELS_LAST holds. An MLP would only pay
    a copy to flatten its input."""
    if sample_ndim != 4 or not any(isinstance(m, nn.Conv2d) for m in student.modules()):
        return False
    return device.type == "cuda" or (device.type == "cpu" and CPU_CHANNELS_LAST)


def resolve_teacher_precision(requested: str, device: torch.device, precision: str) -> str:
    """The teacher only infers, so with precision auto it may run in bf16 where the student trains in fp32:
    on CPUs with native bf16 its forward takes half the time, and its soft targets move by about 0.4 % of
    the largest logit, far below what changes a student (docs/benchmarks.md compares the accuracies)."""
    if requested == "auto" and device.type == "cpu" and precision == "fp32" and cpu_has_fast_bf16():
        return "bf16"
    return precision


def infer_batch_size(sample_numel: int, device: torch.device) -> int:
    """Inference batches sized by bytes, not samples (no activations are kept for backward): ~32 MB of input
    per batch on the CPU, ~128 MB on a GPU, between 16 and 8192 samples. Small images get large batches;
    224-px images get about 50 on the CPU, whose activations stay a few hundred MB (a floor of 256 samples
    held 2.3 GB of a small convnet's activations at 224 px: docs/benchmarks.md, data at scale)."""
    budget = (128 if device.type == "cuda" else 32) * 1024**2 // 4
    return int(max(16, min(8192, budget // max(1, sample_numel))))


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """torch.autocast for bf16/fp16; for fp32 no autocast object at all (entering a disabled one still
    costs per step)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def cpu_quota() -> int:
    """The CPUs this process may use: its affinity mask, capped by the cgroup's CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def set_threads(threads: int | None) -> int:
    """Sets torch's intra-op threads and returns the count in effect.

    threads (a positive int): exactly that many; the operator's choice (1 on a machine whose cores other
    processes keep busy: see docs/benchmarks.md). None (or 0): capped at the CPUs this process may use
    (`cpu_quota`). torch sizes its pool from the host's cores; in a container limited to fewer CPUs the
    extra OpenMP threads wait on each other at every small matmul, which costs far more than they bring.
    """
    if threads is not None and threads < 0:
        raise ValueError(f"threads must be positive (or None for the CPU quota), got {threads}")
    if threads:
        torch.set_num_threads(threads)
        return torch.get_num_threads()
    cpus = cpu_quota()
    if torch.get_num_threads() > cpus:
        torch.set_num_threads(cpus)
    return torch.get_num_threads()


def compile_student(student: nn.Module, on: bool) -> str:
    """torch.compile the student in place when asked; returns the status the report names."""
    if not on:
        return "off"
    try:
        student.compile()  # in place: state_dict keys stay those of the eager module (checkpoints, files)
    except Exception as e:  # torch.compile unavailable on this platform
        return f"failed ({type(e).__name__}: {e}); eager"
    return "on"


def uncompile(student: nn.Module) -> None:
    student._compiled_call_impl = None  # what nn.Module.compile() set; eager from the next call on
