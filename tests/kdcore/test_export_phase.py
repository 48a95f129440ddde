"""The export phase on a real student: ONNX and torch.export files that compute what the trained module
computes (checked again here with onnxruntime and the loaded program, on samples the phase did not use),
int8 quantization scored on the test split, latency rows, and refusal of what does not match."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pydantic
import pytest
import torch

from kdcore.checkpoints import load_student, save_student
from kdcore.datasets import TensorData
from kdcore.errors import Cancelled
from kdcore.export_phase import ATOL, RTOL, parity, run_export
from kdcore.models import create_model
from kdcore.spec import ExportSpec

CONV = {"channels": [8, 16], "hidden": 32}


@pytest.fixture(scope="module")
def exported(digits: TensorData, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[tuple]]:
    torch.manual_seed(0)
    info = digits.info
    student = create_model("convnet", num_classes=info.num_classes, in_channels=info.in_channels,
                           input_size=info.image_size, **CONV)
    teacher = create_model("mlp", num_classes=info.num_classes, in_channels=info.in_channels,
                           input_size=info.image_size, hidden=[256, 256]).eval()
    workdir = tmp_path_factory.mktemp("export")
    save_student(student, workdir / "student.safetensors", architecture="convnet", kwargs=CONV, dataset=info)
    events: list[tuple] = []
    result = run_export(ExportSpec(formats=["onnx", "pt2"], int8=True, latency=True), workdir, digits.test,
                        [teacher], torch.device("cpu"), lambda k, d: events.append((k, d)), threads=1)
    return workdir, result, events


def test_exported_files_compute_the_trained_student(exported: tuple, digits: TensorData) -> None:
    workdir, result, events = exported
    assert events[0] == ("phase", {"phase": "export", "formats": ["onnx", "pt2"], "int8": True, "latency": True})
    for fmt, name in (("onnx", "student.onnx"), ("pt2", "student.pt2")):
        r = result[fmt]
        assert r["file"] == name and r["parity"] and r["agreement"] == 1.0 and r["samples"] == 64
        assert r["size_bytes"] == (workdir / name).stat().st_size and r["max_abs_diff"] <= ATOL
    module, _ = load_student(workdir / "student.safetensors")
    x = digits.test.head(200)[64:].float()  # samples the phase's own check did not see, another batch size
    with torch.inference_mode():
        want = module(x).numpy()
        program = torch.export.load(str(workdir / "student.pt2")).module()
        np.testing.assert_allclose(program(x).numpy(), want, atol=ATOL, rtol=RTOL)
    session = ort.InferenceSession(str(workdir / "student.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], want,
                               atol=ATOL, rtol=RTOL)


def test_int8_is_scored_on_the_test_split(exported: tuple, digits: TensorData) -> None:
    workdir, result, _ = exported
    q = result["int8"]
    assert q["file"] == "student.int8.onnx" and (workdir / q["file"]).stat().st_size == q["size_bytes"]
    session = ort.InferenceSession(str(workdir / q["file"]), providers=["CPUExecutionProvider"])
    x = digits.test.head(len(digits.test)).float().numpy()
    preds = session.run(None, {session.get_inputs()[0].name: x})[0].argmax(1)
    assert q["top1"] == pytest.approx(float((preds == digits.test.labels.numpy()).mean()), abs=1e-6)
    assert q["top1_change"] == pytest.approx(q["top1"] - q["student_top1"], abs=1e-6)


def test_latency_compares_teacher_and_student_at_batch_1_and_64(exported: tuple) -> None:
    lat = exported[1]["latency"]
    assert lat["device"] == "cpu" and set(lat["batches"]) == {"1", "64"}
    for row in lat["batches"].values():
        assert row["student_ms"] > 0 and row["teacher_ms"] > 0
        assert row["speedup"] == pytest.approx(row["teacher_ms"] / row["student_ms"], rel=1e-2)


def test_parity_flags_a_model_that_differs() -> None:
    want = np.random.default_rng(0).normal(size=(8, 10)).astype(np.float32)
    assert parity(want + 1e-6, want)["parity"]
    bad = parity(want + 0.01, want)
    assert not bad["parity"] and bad["max_abs_diff"] == pytest.approx(0.01, rel=1e-3)


def test_export_spec_and_cancellation(tmp_path: Path, digits: TensorData) -> None:
    with pytest.raises(pydantic.ValidationError, match="int8"):
        ExportSpec(formats=["pt2"], int8=True)
    assert ExportSpec(formats=["onnx", "onnx"]).formats == ["onnx"]
    info = digits.info
    student = create_model("mlp", num_classes=info.num_classes, in_channels=1, input_size=info.image_size,
                           hidden=[16])
    save_student(student, tmp_path / "student.safetensors", architecture="mlp", kwargs={"hidden": [16]}, dataset=info)
    with pytest.raises(Cancelled):
        run_export(ExportSpec(), tmp_path, digits.test, [], torch.device("cpu"), should_stop=lambda: True)
    assert not (tmp_path / "student.onnx").exists()
