"""What the teacher cache's compact logit formats cost a KD student: fp32 vs bf16 vs top-k + rest mass.

The teacher cache (kdcore/teacher_cache.py, kdcore/logit_pack.py) holds the train split's logits in the first
format that fits its byte budget: fp32, bf16, then, for many classes, the top k logits plus the rest's mass
(k the largest that fits). This benchmark forces each format through the budget (`cache_max_bytes`, as the
worker passes KD_TEACHER_CACHE_MAX_BYTES) and trains the same KD student on the same data and seed with each,
through kdcore.train.run, the loop the workers run. k below the service's floor (TOPK_MIN) is measured too,
by lowering the floor in this process only.

Data: seeded synthetic 100-class data with structure a teacher's soft labels carry: 20 superclasses of 5
classes each (class centres near their superclass centre), 8x8 "images" of the class centre plus noise. A
teacher (mlp 512-512) learns it on labels from its own 15,000 samples (a teacher trained on more data than
the student gets, the usual case). The student (mlp 64) gets 2,000 train samples (20 per class): it is
distilled (by default at T = 2, alpha = 0.5, where KD beats labels alone on this data; T = 4, alpha = 0.9
did not) and once trained on labels alone (the baseline), with Adam (SGD at T^2 = 16 diverged here). For
each format the table gives the bytes held per train sample, the student's test top-1 over --seeds seeds
(mean and spread), and the fidelity of the soft targets: the mean KL(p_T || q_T) at the job's T between
the exact teacher distribution and the one read back from the cache.

    .venv/bin/python benchmarks/teacher_cache_topk.py [--seeds 3] [--epochs 20] [--ks 1,2,5,10,20]
        [--temperature 2 --alpha 0.5]

Writes benchmarks/results/teacher_cache_topk.json.
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

import kdcore.logit_pack as logit_pack
from kdcore.checkpoints import load_student
from kdcore.datasets import load_dataset
from kdcore.logit_pack import BF16, FP32, LogitPack, LogitsFormat
from kdcore.spec import JobSpec
from kdcore.train import Teacher, run

ROOT = Path(__file__).resolve().parents[1]
CLASSES, SUPER = 100, 20
TEACHER = {"architecture": "mlp", "kwargs": {"hidden": [512, 512]}}
STUDENT = {"architecture": "mlp", "kwargs": {"hidden": [64]}}


def make_npz(paths: dict[Path, int], n_test: int, seed: int = 0) -> None:
    """One .npz per path with that many train samples, all of the same classes (and the same test split)."""
    rng = np.random.default_rng(seed)
    supers = rng.normal(0, 1.0, (SUPER, 64)) * 2.0
    centres = supers[np.arange(CLASSES) // (CLASSES // SUPER)] + rng.normal(0, 1.0, (CLASSES, 64)) * 1.1

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, CLASSES, n)
        x = centres[y] + rng.normal(0, 1.0, (n, 64)) * 3.0
        return x.reshape(n, 8, 8).astype(np.float32), y.astype(np.int64)

    xte, yte = split(n_test)
    trains = {path: split(n) for path, n in paths.items()}
    lo = min(xte.min(), *(x.min() for x, _ in trains.values()))  # float pixels in [0, 1], as npz uploads are
    hi = max(xte.max(), *(x.max() for x, _ in trains.values()))
    for path, (xtr, ytr) in trains.items():
        np.savez(path, x_train=(xtr - lo) / (hi - lo), y_train=ytr, x_test=(xte - lo) / (hi - lo), y_test=yte)


def _spec(model: dict[str, Any], method: str, epochs: int, seed: int, lr: float, opt: str = "adam",
          temperature: float = 4.0, alpha: float = 0.9) -> JobSpec:
    return JobSpec.model_validate({
        "teacher": {"checkpoint": "art_teacher"} if method != "none" else None, "student": model,
        "dataset": {"name": "npz", "artifact": "art_bench"},
        "distillation": {"method": method, "temperature": temperature, "alpha": alpha},
        "training": {"epochs": epochs, "batch_size": 128, "optimizer": opt, "lr": lr, "momentum": 0.9,
                     "weight_decay": 5e-4, "lr_schedule": "cosine", "seed": seed},
        "resources": {"device": "cpu", "precision": "fp32"}})


def fidelity(teacher: torch.nn.Module, x: torch.Tensor, fmt: LogitsFormat, t: float = 4.0) -> float:
    """Mean KL(p_T || q_T) over x between the teacher's softmax at T and that of its logits read back from fmt."""
    with torch.inference_mode():
        z = teacher(x).unsqueeze(0)
        pack = LogitPack.empty(fmt, 1, x.shape[0], z.shape[-1], torch.device("cpu"))
        pack.put(0, z)
        q = pack.rows(torch.arange(x.shape[0]))
        log_p, log_q = (z / t).log_softmax(-1), (q / t).log_softmax(-1)
        return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--train", type=int, default=2_000, help="the students' train split (20 per class)")
    ap.add_argument("--teacher-train", type=int, default=15_000, help="the teacher's own train split")
    ap.add_argument("--test", type=int, default=5_000)
    ap.add_argument("--ks", default="1,2,5,10,20")
    ap.add_argument("--lr", type=float, default=0.002, help="the student's (Adam, cosine); the teacher's: SGD 0.05")
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "teacher_cache_topk.json")
    args = ap.parse_args()
    started = datetime.now(UTC)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="kd-topk-"))
    make_npz({work / "teacher.npz": args.teacher_train, work / "data.npz": args.train}, args.test)
    data = load_dataset("npz", work, work / "data.npz")
    t0 = time.perf_counter()
    teacher_data = load_dataset("npz", work, work / "teacher.npz")
    teacher_rep = run(_spec(TEACHER, "none", args.teacher_epochs, 0, 0.05, "sgd"), teacher_data, [], work / "teacher",
                      threads=args.threads)
    module, _ = load_student(work / "teacher" / "student.safetensors")
    teacher = Teacher(module, checksum="bench-teacher")
    print(f"teacher top-1 {teacher_rep['student']['top1']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    logit_pack.TOPK_MIN = 1  # measure k below the service's floor too (this process only)

    formats = [FP32, BF16, *[LogitsFormat("topk", int(k)) for k in args.ks.split(",")]]
    rows: list[dict[str, Any]] = []
    n = len(data.train)
    x_all = data.train.batch(torch.arange(n))
    module.eval()
    base = [run(_spec(STUDENT, "none", args.epochs, s, args.lr), data, [], work / f"base-{s}", threads=args.threads)
            ["student"]["top1"] for s in range(args.seeds)]
    rows.append({"format": "labels only (baseline)", "bytes_per_sample": 0, "top1": base, "kl_t4": None})
    print(f"baseline {statistics.mean(base):.4f}", flush=True)
    for fmt in formats:
        budget = n * fmt.bytes_per_row(CLASSES)  # exactly this format's size: the cache takes it
        tops, statuses = [], set()
        for s in range(args.seeds):
            spec = _spec(STUDENT, "kd", args.epochs, s, args.lr, temperature=args.temperature, alpha=args.alpha)
            rep = run(spec, data, [teacher], work / f"{fmt.name}-{s}", cache_dir=work / "cache",
                      cache_max_bytes=budget, threads=args.threads)
            tops.append(rep["student"]["top1"])
            statuses.add(rep["teacher_cache"])
        kl = fidelity(module, x_all, fmt, args.temperature)
        rows.append({"format": fmt.describe(CLASSES), "bytes_per_sample": fmt.bytes_per_row(CLASSES), "top1": tops,
                     "kl_t4": kl, "teacher_cache": sorted(statuses)})
        print(f"{fmt.describe(CLASSES)}: {statistics.mean(tops):.4f} {sorted(statuses)} KL {kl:.2e}", flush=True)

    lines = ["| teacher cache format | bytes / sample | student top-1 (mean of seeds) | spread | "
             f"vs fp32 (points) | KL(p_T ‖ q_T), T = {args.temperature:g} |", "|---|---|---|---|---|---|"]
    fp32 = statistics.mean(rows[1]["top1"])
    for r in rows:
        m = statistics.mean(r["top1"])
        spread = max(r["top1"]) - min(r["top1"])
        kl = "" if r["kl_t4"] is None else f"{r['kl_t4']:.2e}"
        lines.append(f"| {r['format']} | {r['bytes_per_sample']} | {m:.4f} | {spread:.4f} | "
                     f"{100 * (m - fp32):+.2f} | {kl} |")
    print("\n" + "\n".join(lines))
    result = {"command": "benchmarks/teacher_cache_topk.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "started": started.isoformat(timespec="seconds"),
        "seconds": round((datetime.now(UTC) - started).total_seconds()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "data": {"classes": CLASSES, "superclasses": SUPER, "train": args.train, "test": args.test,
                 "teacher_train": args.teacher_train},
        "teacher": {**TEACHER, "top1": teacher_rep["student"]["top1"]}, "student": STUDENT,
        "rows": rows, "table": lines}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
