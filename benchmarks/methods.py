"""Every distillation method on MNIST, one teacher and one student, under one recipe, against the baseline.

Trains a convnet teacher ([32, 64] channels, 256 hidden; and a second one with another seed for the
two-teacher row) on labels alone, then each student with each method, all with the same optimizer,
schedule, epochs, batch and seed, and once on labels alone (the baseline). The students: a small convnet
([8, 16] channels, 32 hidden, about 18x fewer parameters than the teacher) and two without batch norm,
lenet5 and an mlp 800-800 (issue 13: KD's defaults at T=4 sent a lenet5 to chance at an lr that trains
it on labels). Prints a markdown table per student (top-1, KD gain in points over that student's
baseline, rescues, time) and a summary of the KD gain per method and student, and writes
benchmarks/results/methods.json. Runs through kdcore.train.run, the same loop the workers run (with its
rescues and validation split); the teacher-assistant row chains two runs exactly as linked jobs do. A
method whose student fails (for example a feature method that finds no layer to pair on an mlp) is
listed with its error code.

    .venv/bin/python benchmarks/methods.py [--epochs 6] [--seed 0] [--only kd,dkd] [--students lenet5,mlp]

The dataset root (--dataset-root, default ../shared/datasets) must hold mnist/ with the IDX files.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from kdcore.checkpoints import load_student
from kdcore.datasets import load_dataset
from kdcore.errors import JobError
from kdcore.models import count_params, create_model
from kdcore.spec import JobSpec
from kdcore.train import Teacher, run

ROOT = Path(__file__).resolve().parents[1]
TEACHER = {"architecture": "convnet", "kwargs": {"channels": [32, 64], "hidden": 256}}
ASSISTANT = {"architecture": "convnet", "kwargs": {"channels": [16, 32], "hidden": 64}}
STUDENTS: dict[str, dict[str, Any]] = {
    "convnet": {"architecture": "convnet", "kwargs": {"channels": [8, 16], "hidden": 32}},
    "lenet5": {"architecture": "lenet5", "kwargs": {}},
    "mlp": {"architecture": "mlp", "kwargs": {"hidden": [800, 800]}},
}

# name -> (method, distillation overrides, teachers used). Parameters are each method's defaults
# unless the row says otherwise; the common T=4, alpha=0.9 hold for all.
ROWS: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "kd": ("kd", {}, ["A"]),
    "dkd": ("dkd", {}, ["A"]),
    "fitnets": ("fitnets", {}, ["A"]),
    "fitnets, hint_weight 0.1": ("fitnets", {"params": {"hint_weight": 0.1}}, ["A"]),
    "at": ("at", {}, ["A"]),
    "at, beta 100": ("at", {"params": {"beta": 100.0}}, ["A"]),
    "kd, 2 teachers": ("kd", {}, ["A", "B"]),
    "kd, teacher assistant": ("kd", {}, ["TA"]),
    "kd, T 8->2 linear, 1 warm-up epoch": ("kd", {"schedule": {"temperature": {"kind": "linear", "start": 8, "end": 2},
                                                              "warmup_epochs": 1}}, ["A"]),
    "dml (no teacher)": ("dml", {"alpha": 0.5, "temperature": 1.0}, []),
}


def _recipe(args: argparse.Namespace, seed: int | None = None) -> dict[str, Any]:
    return {"epochs": args.epochs, "batch_size": 128, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
            "weight_decay": 5e-4, "lr_schedule": "cosine", "seed": args.seed if seed is None else seed}


def _spec(model: dict[str, Any], method: str, recipe: dict[str, Any], distill: dict[str, Any] | None = None,
          teachers: int = 0) -> JobSpec:
    t = [{"checkpoint": f"art_{i}"} for i in range(teachers)]
    return JobSpec.model_validate({
        "teacher": (t[0] if teachers == 1 else t) if teachers else None, "student": model,
        "dataset": {"name": "mnist"}, "distillation": {"method": method, **(distill or {})},
        "training": recipe, "resources": {"device": "auto"}})


def _teacher(path: Path, label: str) -> Teacher:
    module, _ = load_student(path / "student.safetensors")
    return Teacher(module, count_params(module), (path / "student.safetensors").stat().st_size, label)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _log(label: str):
    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "epoch":
            print(f"  {label}: epoch {data['epoch']}/{data['epochs']} test top1 {data['test_top1']:.4f} "
                  f"({data['seconds']:.1f} s)", flush=True)
    return on_event


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="comma-separated row names or methods to run (default: all)")
    ap.add_argument("--students", default=",".join(STUDENTS), help="comma-separated students (default: all: "
                    "%(default)s)")
    ap.add_argument("--dataset-root", type=Path, default=ROOT.parent / "shared" / "datasets")
    ap.add_argument("--work", type=Path, default=None, help="keep teachers and runs here (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "methods.json")
    args = ap.parse_args()
    started = datetime.now(UTC)
    work = args.work or Path(tempfile.mkdtemp(prefix="kd-methods-"))
    data = load_dataset("mnist", args.dataset_root)
    print(f"MNIST {data.x_train.shape[0]} train / {data.x_test.shape[0]} test; work dir {work}", flush=True)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    rows = {k: v for k, v in ROWS.items() if not only or k in only or v[0] in only}

    students = {k: STUDENTS[k] for k in args.students.split(",") if k.strip()}
    reports: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}

    def train(name: str, spec: JobSpec, teachers: list[Teacher]) -> dict[str, Any] | None:
        # a finished run left in --work is reused (its checkpoint says so)
        try:
            rep = run(spec, data, teachers, work / _slug(name), _log(name))
        except JobError as e:  # a method that cannot run (or diverged) on this student: a row, not a crash
            failures[name] = f"{e.code}: {e.message[:160]}"
            print(f"  {name}: failed {failures[name]}", flush=True)
            return None
        reports[name] = rep
        return rep

    need = {t for _, _, ts in rows.values() for t in ts}
    teachers: dict[str, Teacher] = {}
    for key, seed in (("A", args.seed), ("B", args.seed + 1)):
        if key in need or (key == "A" and "TA" in need):
            train(f"teacher {key}", _spec(TEACHER, "none", _recipe(args, seed)), [])
            teachers[key] = _teacher(work / _slug(f"teacher {key}"), f"teacher {key}")
    if "TA" in need:
        train("assistant", _spec(ASSISTANT, "kd", _recipe(args), teachers=1), [teachers["A"]])
        teachers["TA"] = _teacher(work / "assistant", "assistant")

    lines: list[str] = []
    table = []
    gains: dict[str, dict[str, float | str]] = {}  # method row -> student -> KD gain in points (or the failure)
    for student, model in students.items():
        prefix = "" if student == "convnet" else f"{student} / "  # convnet runs keep their earlier names in --work
        b = train(f"{prefix}baseline", _spec(model, "none", _recipe(args)), [])
        base = b["student"]["top1"] if b else float("nan")
        for name, (method, distill, ts) in rows.items():
            train(prefix + name, _spec(model, method, _recipe(args), distill, teachers=len(ts)),
                  [teachers[t] for t in ts])
        s_params = count_params(create_model(model["architecture"], num_classes=10, in_channels=1,
                                             input_size=(28, 28), **model["kwargs"]))
        lines += ["", f"student {student} ({s_params:,} parameters), baseline top-1 {base:.4f}", "",
                  "| run | method | top-1 | KD gain (points) | rescues | train+eval time (s) |",
                  "|---|---|---|---|---|---|"]
        for name in ["baseline", *rows]:
            full = prefix + name
            if full in failures:
                lines.append(f"| {name} | {rows[name][0] if name in rows else 'none'} | {failures[full]} | | | |")
                gains.setdefault(name, {})[student] = failures[full].split(":")[0]
                continue
            if full not in reports:
                continue
            rep = reports[full]
            top1 = rep["student"]["top1"]
            gain = None if name == "baseline" else round(100 * (top1 - base), 2)
            # training plus evaluation time from the report itself, so that a run reused from --work keeps it
            secs = sum(e["seconds"] + e.get("eval_seconds", 0.0) for e in rep["epochs"])
            rescues = len(rep.get("rescues", []))
            table.append({"student": student, "run": name, "method": rep["method"], "top1": top1,
                          "kd_gain_points": gain, "rescues": rescues, "seconds": round(secs, 1),
                          "peer_top1": rep.get("peer", {}).get("top1")})
            if gain is not None:
                gains.setdefault(name, {})[student] = gain
            gain_s = "" if gain is None else f"{gain:+.2f}"
            peer = f" (peer {rep['peer']['top1']:.4f})" if "peer" in rep else ""
            lines.append(f"| {name} | {rep['method']} | {top1:.4f}{peer} | {gain_s} | {rescues} | {secs:.0f} |")
    lines += ["", "KD gain over each student's baseline (points), at the catalog defaults unless the row says "
              "otherwise; 'loses everywhere' when no student gained", "",
              "| run | " + " | ".join(students) + " | |", "|---|" + "---|" * (len(students) + 1)]
    for name, per in gains.items():
        vals = [per.get(st, "") for st in students]
        nums = [v for v in vals if isinstance(v, float | int)]
        verdict = "loses everywhere" if nums and all(v < 0 for v in nums) else ""
        lines.append(f"| {name} | " + " | ".join(f"{v:+.2f}" if isinstance(v, float | int) else str(v)
                                                 for v in vals) + f" | {verdict} |")
    print("\n".join(lines))
    result = {
        "command": "benchmarks/methods.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                       (("epochs", args.epochs), ("seed", args.seed),
                                                        ("students", args.students))),
        "started": started.isoformat(timespec="seconds"), "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "teacher": TEACHER, "assistant": ASSISTANT, "students": students, "recipe": _recipe(args),
        "temperature": 4.0, "alpha": 0.9, "rows": table, "failures": failures, "kd_gain_points": gains,
        "markdown": "\n".join(lines),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
