"""A conv student's training speed on CPU: memory format and precision, and the loop old vs new, in one run.

Two measurements on seeded synthetic CIFAR-shaped data (3x32x32, 10 classes), cifar_resnet20, batch 128, SGD:

1. Training steps (forward, cross-entropy, backward, SGD step) of a plain PyTorch loop in each variant:
   fp32 contiguous (what the loop did on CPU), fp32 channels_last, and channels_last + bf16 autocast. The
   last runs only on a CPU with native bf16 (AVX-512 BF16 or AMX, kdcore.hardware.cpu_has_fast_bf16) or
   with --force-bf16: elsewhere bf16 is emulated and far slower. The variants are interleaved, round after
   round, and each is summarized by its median over the rounds: on a shared machine the load drifts, and
   interleaving exposes every variant to the same drift. Also the median of the per-round ratio to fp32
   contiguous, which cancels the drift between rounds.
2. The loop itself: kdcore.train.run, one epoch of the same student (method none) on --n samples, as it
   was (hardware.CPU_CHANNELS_LAST = False: contiguous on CPU) and as it is (the loop's own choice),
   alternated --loop-rounds times. It gives images/s of the training steps (epoch seconds without
   evaluation).

    .venv/bin/python benchmarks/conv_cpu.py [--rounds 10] [--steps 3] [--threads N] [--n 2048]

Writes benchmarks/results/conv_cpu.json, with the machine's load average before and after.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import kdcore.hardware as hardware
from kdcore.datasets._common import make_data
from kdcore.datasets.base import DatasetInfo
from kdcore.hardware import autocast, cpu_has_fast_bf16
from kdcore.models import create_model
from kdcore.spec import JobSpec
from kdcore.train import run

ROOT = Path(__file__).resolve().parents[1]
BATCH = 128
INFO = DatasetInfo(name="cifar10", num_classes=10, in_channels=3, image_size=(32, 32),
                   mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
                   class_names=tuple(str(i) for i in range(10)))


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-shaped uint8 images whose class sets the mean colour of one quadrant (learnable), plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 160, (n, 3, 32, 32)).astype(np.int64)
    for i, label in enumerate(y):
        r, c = (label // 3 % 2) * 16, (label // 6) * 16
        x[i, label % 3, r:r + 16, c:c + 16] += 90
    return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)


def step_rates(args: argparse.Namespace, variants: list[str]) -> dict[str, list[float]]:
    """images/s per round of each variant's training steps, the variants interleaved."""
    x_np, y_np = synthetic(BATCH)
    x = torch.from_numpy(x_np).float().div_(255)
    y = torch.from_numpy(y_np)
    models, opts = {}, {}
    for v in variants:
        torch.manual_seed(0)
        m = create_model("cifar_resnet20", num_classes=10, in_channels=3, input_size=(32, 32))
        if v != "fp32":
            m = m.to(memory_format=torch.channels_last)
        models[v], opts[v] = m.train(), torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)

    def step(v: str) -> None:
        xb = x if v == "fp32" else x.contiguous(memory_format=torch.channels_last)
        with autocast(torch.device("cpu"), "bf16" if v.endswith("bf16") else "fp32"):
            loss = F.cross_entropy(models[v](xb), y)
        opts[v].zero_grad(set_to_none=True)
        loss.backward()
        opts[v].step()

    for v in variants:  # warm-up: oneDNN picks and caches its kernels
        for _ in range(2):
            step(v)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in (variants if r % 2 == 0 else variants[::-1]):
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(v)
            rates[v].append(args.steps * BATCH / (time.perf_counter() - t0))
    return rates


def loop_rates(args: argparse.Namespace) -> dict[str, list[float]]:
    """images/s of one training epoch through kdcore.train.run, the loop as it was and as it is."""
    x, y = synthetic(args.n, seed=1)
    xt, yt = synthetic(256, seed=2)
    data = make_data(INFO, x, y, xt, yt, 255.0)
    spec = JobSpec.model_validate({
        "student": {"architecture": "cifar_resnet20"}, "dataset": {"name": "cifar10"},
        "distillation": {"method": "none"}, "training": {"epochs": 1, "batch_size": BATCH, "lr": 0.05, "seed": 0},
        "resources": {"device": "cpu", "precision": "fp32"}})
    out: dict[str, list[float]] = {"old loop (contiguous)": [], "new loop": []}
    work = Path(tempfile.mkdtemp(prefix="kd-conv-cpu-"))
    for r in range(args.loop_rounds):
        for name in (list(out) if r % 2 == 0 else list(out)[::-1]):
            hardware.CPU_CHANNELS_LAST = name == "new loop" and NEW_CHOICE
            rep = run(spec, data, [], work / f"{r}-{name[:3]}", threads=args.threads)
            epoch = rep["epochs"][0]
            out[name].append(args.n // BATCH * BATCH / epoch["seconds"])
    hardware.CPU_CHANNELS_LAST = NEW_CHOICE
    return out


NEW_CHOICE = hardware.CPU_CHANNELS_LAST  # the loop's choice as shipped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=3, help="training steps per variant per round")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the CPUs this process may use)")
    ap.add_argument("--n", type=int, default=2048, help="train samples of the loop's epoch")
    ap.add_argument("--loop-rounds", type=int, default=2)
    ap.add_argument("--force-bf16", action="store_true", help="measure bf16 autocast without native bf16 too")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "conv_cpu.json")
    args = ap.parse_args()
    started = datetime.now(UTC)
    threads = hardware.set_threads(args.threads)
    load0 = os.getloadavg()
    native = cpu_has_fast_bf16()
    variants = ["fp32", "fp32 channels_last"] + (["channels_last bf16"] if native or args.force_bf16 else [])
    steps = step_rates(args, variants)
    loop = loop_rates(args)
    load1 = os.getloadavg()

    lines = ["| variant | images/s (median of rounds) | min - max | x fp32 contiguous (median of per-round ratios) |",
             "|---|---|---|---|"]
    base = steps["fp32"]
    for v, rs in {**steps, **loop}.items():
        ref = base if v in steps else loop["old loop (contiguous)"]
        ratio = statistics.median(a / b for a, b in zip(rs, ref, strict=True))
        lines.append(f"| {v} | {statistics.median(rs):.0f} | {min(rs):.0f} - {max(rs):.0f} | {ratio:.2f} |")
    print("\n".join(lines))
    result: dict[str, Any] = {
        "command": "benchmarks/conv_cpu.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                         if k != "out"),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(UTC) - started).total_seconds()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native,
                    "threads": threads, "loadavg_before": load0, "loadavg_after": load1},
        "loop_channels_last_on_cpu": NEW_CHOICE, "steps": steps, "loop": loop, "table": lines}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
