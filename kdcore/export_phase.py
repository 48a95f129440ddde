"""The export phase: the trained student made deployable, after training, when the JobSpec asks (`export`).

`run_export` writes, beside `student.safetensors`,
  student.onnx        single-file ONNX (dynamic batch), checked with onnxruntime against the trained module
  student.pt2         a torch.export program, checked by running the loaded program against the module
  student.int8.onnx   (int8) onnxruntime's dynamic int8 quantization of student.onnx, scored on the test split
and, with `latency`, times the teacher(s) and the student at batch 1 and 64 on the job's device.

Parity: on the first PARITY_BATCH test samples, every logit of the exported model must be within
ATOL + RTOL * |reference| of the trained module's (numpy.allclose). A file that fails its check is
removed, so that nobody downloads a model that does not compute the student; the report says why. A
format that cannot be exported (an operator the exporter lacks) is reported the same way: the job still
succeeds with its safetensors student, the report's `export` section says what could not be made.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcore.checkpoints import export_onnx, export_program, load_student
from kdcore.datasets.base import Split
from kdcore.errors import Cancelled
from kdcore.evaluate import topk_accuracy
from kdcore.progress import EventFn
from kdcore.spec import ExportSpec

PARITY_BATCH = 64
ATOL, RTOL = 1e-4, 1e-3  # float32 kernels of two runtimes differ in summation order, never by more
LATENCY_BATCHES = (1, 64)
LATENCY_REPEATS = 15  # timed runs per model and batch size (after WARMUP): the median is reported
WARMUP = 3
LATENCY_BUDGET_S = 5.0  # per model and batch size: a large teacher on a CPU stops early (fewer repeats)
FILES = {"onnx": "student.onnx", "pt2": "student.pt2"}
INT8_FILE = "student.int8.onnx"


def _ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, threads)  # as many as torch was given: never oversubscribe the worker
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _ort_run(session: Any, x: torch.Tensor) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def parity(got: np.ndarray, want: np.ndarray) -> dict[str, Any]:
    """How close an exported model's logits are to the trained module's, and whether within tolerance."""
    diff = float(np.abs(got - want).max()) if got.size else 0.0
    return {"parity": bool(got.shape == want.shape and np.allclose(got, want, atol=ATOL, rtol=RTOL)),
            "max_abs_diff": diff, "agreement": float((got.argmax(1) == want.argmax(1)).mean()),
            "tolerance": {"atol": ATOL, "rtol": RTOL}, "samples": int(want.shape[0])}


def _export_one(fmt: str, student: nn.Module, x: torch.Tensor, want: np.ndarray, workdir: Path,
                threads: int) -> dict[str, Any]:
    path = workdir / FILES[fmt]
    t0 = time.perf_counter()
    try:
        if fmt == "onnx":
            export_onnx(student, x[:2], path)
            got = _ort_run(_ort_session(path, threads), x)
        else:
            export_program(student, x[:2], path)
            with torch.inference_mode():
                got = torch.export.load(str(path)).module()(x).float().numpy()
    except Exception as e:  # an exporter that cannot take this model: reported, the job keeps its student
        path.unlink(missing_ok=True)
        return {"file": None, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    out: dict[str, Any] = {"file": path.name, "size_bytes": path.stat().st_size, **parity(got, want),
                           "seconds": round(time.perf_counter() - t0, 3)}
    if not out["parity"]:
        path.unlink(missing_ok=True)
        out.update(file=None, error=f"the exported model differs from the trained student by up to "
                   f"{out['max_abs_diff']:.3g} (tolerance atol {ATOL} + rtol {RTOL}); the file was removed")
    return out


def quantize_int8(onnx_path: Path, test: Split, fp32_top1: float, threads: int) -> dict[str, Any]:
    """onnxruntime's dynamic int8 quantization (weights int8, activations quantized per batch at run time;
    no calibration data needed), scored on the whole test split beside the float model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = onnx_path.with_name(INT8_FILE)
    try:
        quantize_dynamic(str(onnx_path), str(path), weight_type=QuantType.QInt8)
        session = _ort_session(path, threads)
        logits = torch.cat([torch.from_numpy(_ort_run(session, xb.float().cpu())) for xb in test.chunks(256)])
    except Exception as e:
        path.unlink(missing_ok=True)
        return {"file": None, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    top1, top5 = topk_accuracy(logits, test.labels.cpu())
    return {"file": path.name, "size_bytes": path.stat().st_size, "size_ratio":
            round(onnx_path.stat().st_size / max(1, path.stat().st_size), 3), "top1": round(top1, 6),
            "top5": None if top5 is None else round(top5, 6), "student_top1": fp32_top1,
            "top1_change": round(top1 - fp32_top1, 6), "method": "onnxruntime quantize_dynamic, QInt8 weights"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def median_ms(model: Callable[[torch.Tensor], Any], x: torch.Tensor, device: torch.device,
              repeats: int = LATENCY_REPEATS, budget_s: float = LATENCY_BUDGET_S) -> dict[str, Any]:
    """Median wall time of model(x) over `repeats` runs after WARMUP (fewer when `budget_s` runs out)."""
    for _ in range(WARMUP):
        model(x)
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        model(x)
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": round(statistics.median(times), 4), "repeats": len(times)}


def latency(student: nn.Module, teachers: list[nn.Module], test: Split, device: torch.device,
            should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Teacher(s) vs student, fp32, at each of LATENCY_BATCHES on `device`; with several teachers their
    time is the sum (the ensemble the student replaces)."""
    out: dict[str, Any] = {"device": str(device), "precision": "fp32", "statistic": "median", "batches": {}}
    for bs in LATENCY_BATCHES:
        x = test.head(min(bs, len(test))).float()
        x = x.repeat((bs + len(x) - 1) // len(x), *([1] * (x.ndim - 1)))[:bs].to(device)
        row: dict[str, Any] = {}
        if should_stop():
            raise Cancelled()
        row["student_ms"] = median_ms(student, x, device)["median_ms"]
        if teachers:
            row["teacher_ms"] = round(sum(median_ms(t, x, device)["median_ms"] for t in teachers), 4)
            row["speedup"] = round(row["teacher_ms"] / max(row["student_ms"], 1e-9), 3)
        out["batches"][str(bs)] = row
    return out


def run_export(export: ExportSpec, workdir: Path, test: Split, teachers: list[nn.Module], device: torch.device,
               on_event: EventFn = lambda kind, data: None, should_stop: Callable[[], bool] = lambda: False,
               fp32_top1: float | None = None, threads: int | None = None) -> dict[str, Any]:
    """The export phase for the student in workdir/student.safetensors; returns the report's `export`."""
    on_event("phase", {"phase": "export", "formats": list(export.formats), "int8": export.int8,
                       "latency": export.latency})
    threads = threads or torch.get_num_threads()
    student, _ = load_student(workdir / "student.safetensors", "cpu")  # exporters trace on the CPU
    x = test.head(min(PARITY_BATCH, len(test))).float().cpu()
    with torch.inference_mode():
        want = student(x).float().numpy()
    result: dict[str, Any] = {}
    for fmt in export.formats:
        if should_stop():
            raise Cancelled()
        result[fmt] = _export_one(fmt, student, x, want, workdir, threads)
        r = result[fmt]
        on_event("log", {"level": "info" if r["file"] else "warning", "message": f"export {fmt}: " + (
            f"{r['file']}, max |diff| {r['max_abs_diff']:.2e}" if r["file"] else r["error"])})
    if export.int8 and (result.get("onnx") or {}).get("file"):
        if should_stop():
            raise Cancelled()
        if fp32_top1 is None:
            fp32_top1, _ = topk_accuracy(torch.cat([student(xb.float().cpu()).detach() for xb in test.chunks(256)]),
                                         test.labels.cpu())
        result["int8"] = quantize_int8(workdir / FILES["onnx"], test, round(fp32_top1, 6), threads)
        on_event("log", {"message": f"int8: top1 {result['int8'].get('top1')} (fp32 {fp32_top1:.4f})"
                         if result["int8"]["file"] else f"int8: {result['int8']['error']}"})
    elif export.int8:
        result["int8"] = {"file": None, "error": "needs the ONNX export, which failed"}
    if export.latency:
        result["latency"] = latency(student.to(device), teachers, test, device, should_stop)
        on_event("log", {"message": "latency (median ms): " + ", ".join(
            f"batch {bs}: student {r['student_ms']}" + (f", teacher {r['teacher_ms']}" if "teacher_ms" in r else "")
            for bs, r in result["latency"]["batches"].items())})
    return result
