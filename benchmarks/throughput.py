"""Distillation throughput side by side: kdcore, torchdistill and a textbook PyTorch loop, one script run.

Same teacher, student, data, recipe and epochs for all three (T=4, alpha 0.9 on the soft term, SGD
lr 0.05 momentum 0.9 nesterov, weight decay 5e-4, cosine per step, batch 128, 3 epochs, seed 0):

    job1  MNIST, mlp 1200-1200 teacher -> mlp [128] student       (CPU; the typical compression case)
    job2  MNIST, mlp 1200-1200 teacher -> mlp [800, 800] student   (CPU; a heavy student)
    gpu   CIFAR-shaped synthetic data, cifar_resnet32x4 -> cifar_resnet8x4 (needs CUDA; skipped without)

    .venv/bin/python benchmarks/throughput.py [--job job1 job2 gpu] [--epochs 3] [--repeat 1]

Each contender runs in its own process (so peak memory is its own, and no thread pool or allocator is
shared), one after the other; `--repeat N` runs each N times, interleaved, and keeps each one's best
(the machine is shared: the best of several runs is the one least disturbed). Images/s count training
only: for kdcore the sum of the report's per-epoch `seconds` (which include building the teacher cache),
for the peers the time of their training loops (DataLoader included). Evaluation is outside all of them.

- kdcore: `kdcore.train.run` as a worker calls it, with an empty cache directory (the teacher cache is
  built inside the timed epochs: a first job). Also shown: the same job again (cache hit, as in a sweep)
  and kdcore with the cache off (teacher at every step), to separate the cache from the rest of the loop.
- torchdistill 1.1.5 (`pip install -e '.[bench]'`): its DistillationBox with a WeightedSumLoss over its
  KDLoss (its alpha weighs the hard term, so alpha=0.1 and beta=0.9 there), its DataLoader config, and
  the train loop of its image-classification example (loss.item() per step for its metric logger).
- textbook: torchvision MNIST with ToTensor + Normalize through a DataLoader, teacher forward per step
  under no_grad, fp32, the KD loss written out.

The roofline: FLOPs per image counted by torch.utils.flop_counter (teacher forward; student forward plus
backward), the fp32 matmul peak measured here (best of square matmuls), and the share of that peak each
loop reaches. With the cache the teacher runs once per sample: 1/epochs of its forward per image.

MNIST comes from --mnist-root (default ../shared/datasets/mnist, the four IDX .gz files); the teacher is
trained once by kdcore (method none) and kept under --cache-dir with the decompressed copy torchvision
needs.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

T, ALPHA, BATCH, LR, MOMENTUM, WD, SEED = 4.0, 0.9, 128, 0.05, 0.9, 5e-4, 0
TEACHER_HIDDEN = [1200, 1200]
JOBS: dict[str, dict[str, Any]] = {
    "job1": {"student": {"architecture": "mlp", "kwargs": {"hidden": [128]}}, "device": "cpu"},
    "job2": {"student": {"architecture": "mlp", "kwargs": {"hidden": [800, 800]}}, "device": "cpu"},
    "gpu": {"student": {"architecture": "cifar_resnet8x4", "kwargs": {}}, "device": "cuda",
            "teacher": {"architecture": "cifar_resnet32x4", "kwargs": {}}},
}
CONTENDERS = ["kdcore", "kdcore-hit", "kdcore-nocache", "torchdistill", "textbook"]
LABELS = {"kdcore": "kdcore (first job: builds the teacher cache)",
          "kdcore-hit": "kdcore (same teacher+data: cache hit)",
          "kdcore-nocache": "kdcore (cache off: teacher every step)", "torchdistill": "torchdistill 1.1.5",
          "textbook": "textbook PyTorch loop"}


# ---------------------------------------------------------------------------------------------- shared setup
def _mnist_info():
    from kdcore.datasets.mnist import MNIST_INFO
    return MNIST_INFO


def torchvision_root(cache_dir: Path, mnist_root: Path) -> Path:
    """torchvision's MNIST wants uncompressed files under <root>/MNIST/raw: decompress once into the cache."""
    raw = cache_dir / "torchvision" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in mnist_root.glob("*-ubyte.gz"):
        out = raw / gz.name[:-3]
        if not out.exists():
            tmp = out.with_suffix(".tmp")
            with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(tmp, out)
    return cache_dir / "torchvision"


def ensure_teacher(cache_dir: Path, mnist_root: Path, epochs: int = 6) -> Path:
    """The mlp 1200-1200 teacher, trained once by kdcore on labels (dropout 0.2) and kept."""
    path = cache_dir / f"teacher_mlp1200x1200_e{epochs}.safetensors"
    if path.exists():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    from kdcore.datasets import load_dataset
    from kdcore.spec import JobSpec
    from kdcore.train import run

    print(f"training the teacher once (mlp 1200-1200, {epochs} epochs) -> {path}", flush=True)
    spec = JobSpec.model_validate({
        "student": {"architecture": "mlp", "kwargs": {"hidden": TEACHER_HIDDEN, "dropout": 0.2}},
        "dataset": {"name": "mnist"}, "distillation": {"method": "none"},
        "training": {"epochs": epochs, "batch_size": BATCH, "lr": LR, "seed": 0}, "resources": {"device": "cpu"}})
    with tempfile.TemporaryDirectory() as tmp:
        rep = run(spec, load_dataset("mnist", mnist_root.parent), [], Path(tmp))
        shutil.copy(Path(tmp) / "student.safetensors", path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    print(f"teacher test top1 {rep['student']['top1']:.4f}", flush=True)
    return path


def synthetic_cifar(n_train: int = 50000, n_test: int = 10000, classes: int = 10):
    """CIFAR-shaped data (3x32x32, normalized) whose labels a network can learn: a fixed random linear
    readout of a smoothed image. Throughput does not depend on the pixel values."""
    import torch

    from kdcore.datasets import DatasetInfo, TensorData

    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_test, 3, 32, 32, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    x = (x - x.mean()) / x.std()
    w = torch.randn(3 * 32 * 32, classes, generator=g)
    y = (x.flatten(1) @ w).argmax(1)
    info = DatasetInfo(name="cifar10", num_classes=classes, in_channels=3, image_size=(32, 32),
                       mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), class_names=tuple(map(str, range(classes))),
                       train_size=n_train, test_size=n_test)
    return TensorData(info, x[:n_train].contiguous(), y[:n_train], x[n_train:].contiguous(), y[n_train:])


def _models(job: str, args: argparse.Namespace, device: Any):
    """(teacher in eval mode, student freshly initialized with the seed, info), the same for every contender."""
    import torch

    from kdcore.checkpoints import load_student
    from kdcore.models import create_model

    spec = JOBS[job]
    if job == "gpu":
        info = synthetic_cifar().info
        torch.manual_seed(1)  # the teacher does not change with --seed
        teacher = create_model(spec["teacher"]["architecture"], num_classes=info.num_classes, in_channels=3,
                               input_size=(32, 32)).to(device).eval()
    else:
        info = _mnist_info()
        teacher, _ = load_student(Path(args.teacher), device)
    torch.manual_seed(SEED)  # kdcore seeds the same way before building its student
    student = create_model(spec["student"]["architecture"], num_classes=info.num_classes,
                           in_channels=info.in_channels, input_size=info.image_size,
                           **spec["student"]["kwargs"]).to(device)
    return teacher, student, info


def _peak_memory(device_type: str) -> int:
    if device_type == "cuda":
        import torch
        return int(torch.cuda.max_memory_allocated())
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # DataLoader workers, if any
    return int((self_kb + child_kb) * 1024)


# ---------------------------------------------------------------------------------------------- contenders
def run_kdcore(job: str, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    import torch

    from kdcore.checkpoints import load_student
    from kdcore.datasets import load_dataset
    from kdcore.spec import JobSpec
    from kdcore.teacher_cache import module_digest
    from kdcore.train import Teacher, run

    spec_d = JOBS[job]
    device = "cuda" if job == "gpu" else "cpu"
    if job == "gpu":
        data = synthetic_cifar()
        teacher, _, _ = _models(job, args, device)
        checksum = None
    else:
        data = load_dataset("mnist", Path(args.mnist_root).parent)
        teacher, _ = load_student(Path(args.teacher), device)
        checksum = module_digest(teacher)
    spec = JobSpec.model_validate({
        "teacher": {"job": "job_benchmark"}, "student": spec_d["student"], "dataset": {"name": data.info.name},
        "distillation": {"method": "kd", "temperature": T, "alpha": ALPHA},
        "training": {"epochs": args.epochs, "batch_size": BATCH, "lr": LR, "momentum": MOMENTUM,
                     "weight_decay": WD, "lr_schedule": "cosine", "seed": SEED},
        "resources": {"device": device, "precision": args.precision, "compile": args.compile}})
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(tmp) / "cache"
        t = Teacher(teacher, checksum=checksum)
        if mode == "kdcore-hit":  # an earlier job of the sweep left the entry: build it untimed first
            run(spec.model_copy(update={"training": spec.training.model_copy(update={"epochs": 1})}), data, [t],
                Path(tmp) / "warm", cache_dir=cache_dir, threads=args.threads or None)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rep = run(spec, data, [t], Path(tmp) / "job", cache_dir=cache_dir, teacher_cache=mode != "kdcore-nocache",
                  threads=args.threads or None)
    train_s = sum(e["seconds"] for e in rep["epochs"])
    return {"train_seconds": train_s, "images": args.epochs * data.x_train.shape[0], "top1": rep["student"]["top1"],
            "teacher_cache": rep.get("teacher_cache"), "compile": rep.get("compile"),
            "precision": f"{rep.get('teacher_precision', rep['precision'])} / {rep['precision']}",
            "peak_memory": _peak_memory(device), "wall_seconds": rep["wall_seconds"]}


def _loaders(job: str, args: argparse.Namespace, device: Any):
    """The peers' data: torchvision MNIST (ToTensor + Normalize) or the synthetic CIFAR tensors, via DataLoader."""
    import torch
    from torch.utils.data import TensorDataset

    if job == "gpu":
        d = synthetic_cifar()
        train, test = TensorDataset(d.x_train, d.y_train), TensorDataset(d.x_test, d.y_test)
    else:
        import torchvision
        import torchvision.transforms as tt

        info = _mnist_info()
        tf = tt.Compose([tt.ToTensor(), tt.Normalize(info.mean, info.std)])
        root = torchvision_root(Path(args.cache_dir), Path(args.mnist_root))
        train = torchvision.datasets.MNIST(str(root), train=True, transform=tf, download=False)
        test = torchvision.datasets.MNIST(str(root), train=False, transform=tf, download=False)
    pin = torch.device(device).type == "cuda"
    kw = {"num_workers": args.loader_workers, "pin_memory": pin, "persistent_workers": args.loader_workers > 0}
    return train, test, kw


def _test_top1(model: Any, test: Any, device: Any) -> float:
    import torch
    from torch.utils.data import DataLoader

    model.eval()
    right = 0
    with torch.no_grad():
        for x, y in DataLoader(test, batch_size=1024):
            right += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return right / len(test)


def run_textbook(job: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    device = torch.device("cuda" if job == "gpu" else "cpu")
    teacher, student, _ = _models(job, args, device)
    train, test, kw = _loaders(job, args, device)
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, **kw)
    opt = torch.optim.SGD(student.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs * len(loader))
    teacher.eval()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.epochs):
        student.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                z_t = teacher(x)
            z_s = student(x)
            soft = F.kl_div(F.log_softmax(z_s / T, dim=1), F.softmax(z_t / T, dim=1), reduction="batchmean")
            loss = ALPHA * T * T * soft + (1 - ALPHA) * F.cross_entropy(z_s, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    return {"train_seconds": train_s, "images": args.epochs * len(train), "top1": _test_top1(student, test, device),
            "precision": "fp32", "peak_memory": _peak_memory(device.type)}


def run_torchdistill(job: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.utils.data import RandomSampler

    try:
        from torchdistill.core.distillation import get_distillation_box
    except ImportError:
        return {"error": "torchdistill is not installed: pip install -e '.[bench]'"}
    device = torch.device("cuda" if job == "gpu" else "cpu")
    teacher, student, _ = _models(job, args, device)
    train, test, kw = _loaders(job, args, device)
    steps = args.epochs * -(-len(train) // BATCH)
    config = {
        "num_epochs": args.epochs,
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": BATCH, **kw}},
        "teacher": {"forward_proc": "forward_batch_only", "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "requires_grad": True},
        "optimizer": {"key": "SGD", "kwargs": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WD, "nesterov": True}},
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": steps}, "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {
            "criterion": {"key": "KDLoss", "kwargs": {
                "student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
                "teacher_module_io": "output", "temperature": T, "alpha": 1 - ALPHA, "beta": ALPHA,
                "reduction": "batchmean"}},
            "weight": 1.0}}}},
    }
    box = get_distillation_box(teacher, student, {"train": train}, config, device, None, False, 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for epoch in range(args.epochs):  # the loop of torchdistill's examples/torchvision/image_classification.py
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            sample_batch, targets = sample_batch.to(device), targets.to(device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss)
            _ = loss.item(), box.optimizer.param_groups[0]["lr"]  # what its MetricLogger.update reads per step
        box.post_epoch_process()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0
    return {"train_seconds": train_s, "images": args.epochs * len(train),
            "top1": _test_top1(box.student_model, test, device), "precision": "fp32",
            "peak_memory": _peak_memory(device.type)}


def child(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)  # the same count for every contender (kdcore's run gets threads=)
    job, who = args.child
    if who.startswith("kdcore"):
        out = run_kdcore(job, args, who)
    elif who == "torchdistill":
        out = run_torchdistill(job, args)
    else:
        out = run_textbook(job, args)
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------- roofline
def matmul_peak_gflops(seconds: float = 1.0, dtype: str = "fp32") -> float:
    """Best GFLOP/s of square matmuls (2048 and 4096) with the threads the contenders use."""
    import torch

    best = 0.0
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    for n in (2048, 4096):
        a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
        a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            t1 = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t1) / 1e9)
            reps += 1
    return best


def flops_per_image(job: str, args: argparse.Namespace) -> tuple[float, float]:
    """(teacher forward, student forward + backward) FLOPs per image, counted on a CPU batch of 128."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    teacher, student, info = _models(job, args, "cpu")
    x = torch.randn(BATCH, info.in_channels, *info.image_size)
    y = torch.randint(0, info.num_classes, (BATCH,))
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        z_t = teacher(x)
    t_flops = fc.get_total_flops() / BATCH
    with FlopCounterMode(display=False) as fc:
        z_s = student(x)
        soft = F.kl_div(F.log_softmax(z_s / T, 1), F.softmax(z_t / T, 1), reduction="batchmean")
        loss = ALPHA * T * T * soft + (1 - ALPHA) * F.cross_entropy(z_s, y)
        loss.backward()
    return t_flops, fc.get_total_flops() / BATCH


# ---------------------------------------------------------------------------------------------- driver
def _spawn(job: str, who: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", job, who, "--epochs", str(args.epochs), "--teacher", str(args.teacher),
           "--mnist-root", str(args.mnist_root), "--cache-dir", str(args.cache_dir), "--precision", args.precision,
           "--loader-workers", str(args.loader_workers), "--threads", str(args.threads), "--seed", str(args.seed)] + (
               ["--compile"] if args.compile else [])
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout).strip()[-600:]}"}
    out = json.loads(lines[-1][len("RESULT "):])
    out["process_seconds"] = round(time.time() - t0, 1)
    return out


def _table(rows: list[list[str]], head: list[str]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def bench_job(job: str, args: argparse.Namespace, peak: float) -> dict[str, Any]:
    import torch

    if JOBS[job]["device"] == "cuda" and not torch.cuda.is_available():
        print(f"\n## {job}: skipped (no CUDA device on this machine)")
        return {"skipped": "no CUDA device"}
    who = [c for c in CONTENDERS if c in args.contenders]
    best: dict[str, dict[str, Any]] = {}
    for r in range(args.repeat):
        for c in who:
            res = _spawn(job, c, args)
            ips = res["images"] / res["train_seconds"] if "error" not in res else None
            print(f"  {job} run {r + 1}/{args.repeat} {c}: " + (f"{ips:,.0f} images/s, top1 {res['top1']:.4f}"
                  if ips else res["error"]), flush=True)
            if ips and (c not in best or ips > best[c]["images_per_s"]):
                best[c] = {**res, "images_per_s": ips}
            elif c not in best and "error" in res:
                best[c] = res
    t_fl, s_fl = flops_per_image(job, args)
    per_step_fl = t_fl + s_fl
    cached_fl = t_fl / args.epochs + s_fl
    rows = []
    for c in who:
        res = best[c]
        if "error" in res:
            rows.append([LABELS[c], "error: " + res["error"][-200:].replace("\n", " "), "", "", "", "", "", ""])
            continue
        fl = per_step_fl if c in ("textbook", "torchdistill", "kdcore-nocache") else (
            s_fl if c == "kdcore-hit" else cached_fl)
        ratios = " / ".join(f"{res['images_per_s'] / best[p]['images_per_s']:.2f}x"
                            if p in best and "images_per_s" in best[p] else "n/a" for p in ("textbook", "torchdistill"))
        prec = res["precision"] if "/" in res["precision"] else f"{res['precision']} / {res['precision']}"
        rows.append([LABELS[c], f"{res['images_per_s']:,.0f}", ratios, f"{100 * res['top1']:.2f}", prec,
                     f"{res['peak_memory'] / 2**20:,.0f}", f"{fl / 1e6:.2f}",
                     f"{100 * res['images_per_s'] * fl / (peak * 1e9):.0f} %"])
    mem = "peak GPU MiB" if JOBS[job]["device"] == "cuda" else "peak RSS MiB"
    table = _table(rows, ["loop", "images/s", "vs textbook / torchdistill", "test top-1 %", "teacher / student", mem,
                          "MFLOP/image", "share of fp32 peak"])
    roof = (f"roofline: teacher forward {t_fl / 1e6:.2f} MFLOP/image, student forward+backward {s_fl / 1e6:.2f}; "
            f"per step (teacher every step) {per_step_fl / 1e6:.2f} MFLOP/image -> {peak * 1e9 / per_step_fl:,.0f} "
            f"images/s at the peak; cached over {args.epochs} epochs {cached_fl / 1e6:.2f} MFLOP/image -> "
            f"{peak * 1e9 / cached_fl:,.0f} images/s")
    title = {"job1": "job1: MNIST, mlp 1200-1200 -> mlp [128]", "job2": "job2: MNIST, mlp 1200-1200 -> mlp [800, 800]",
             "gpu": "gpu: CIFAR-shaped synthetic, cifar_resnet32x4 -> cifar_resnet8x4"}[job]
    print(f"\n## {title} ({args.epochs} epochs, batch {BATCH}, T={T}, alpha {ALPHA})\n\n{table}\n\n{roof}\n",
          flush=True)
    return {"results": best, "teacher_mflop": t_fl / 1e6, "student_mflop": s_fl / 1e6, "table": table,
            "roofline": roof}


def main() -> None:
    global SEED
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", nargs="+", choices=list(JOBS), default=["job1", "job2", "gpu"])
    ap.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=CONTENDERS)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="runs per contender; the best counts")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="kdcore's")
    ap.add_argument("--compile", action="store_true", help="kdcore with resources.compile: true")
    ap.add_argument("--seed", type=int, default=SEED, help="student init and data order (the teacher keeps seed 0)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for every contender (0: torch's default, one per core)")
    ap.add_argument("--loader-workers", type=int, default=0,
                    help="DataLoader workers of the peers (0: in the training process; on 2 cores the fastest)")
    ap.add_argument("--mnist-root", type=Path, default=ROOT.parent / "shared" / "datasets" / "mnist")
    ap.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "distillery-bench")
    ap.add_argument("--teacher", type=Path, default=None, help="a kdcore student file to use as the MNIST teacher")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "throughput.json")
    ap.add_argument("--child", nargs=2, metavar=("JOB", "CONTENDER"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    SEED = args.seed
    if args.child:
        child(args)
        return
    import torch

    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    if any(j != "gpu" for j in args.job):
        args.teacher = args.teacher or ensure_teacher(args.cache_dir, args.mnist_root)
    peak = matmul_peak_gflops()
    peak_bf16 = matmul_peak_gflops(dtype="bf16")
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"# distillation throughput, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\nmachine: {cpu}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"load average {os.getloadavg()[0]:.2f} at start; measured matmul peak fp32 {peak:.1f} GFLOP/s, "
          f"bf16 {peak_bf16:.1f} GFLOP/s", flush=True)
    results = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": cpu, "cpus": os.cpu_count(),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "fp32_peak_gflops": peak,
               "bf16_peak_gflops": peak_bf16, "load_average_start": os.getloadavg()[0],
               "epochs": args.epochs, "repeat": args.repeat,
               "command": " ".join([Path(sys.executable).name, *sys.argv]), "jobs": {}}
    for job in args.job:
        results["jobs"][job] = bench_job(job, args, peak)
    results["load_average_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"load average at the end {results['load_average_end']:.2f}; results in {args.out}")


if __name__ == "__main__":
    main()
