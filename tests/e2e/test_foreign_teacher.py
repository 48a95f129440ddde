"""A team's own teacher through the HTTP API (issue 12's done-when): a LeNet-style CNN trained here at
32x32 with its own normalization and a log-softmax head, exported elsewhere-style as a .pt2 with a bounded
batch and as an ONNX model with batch 1, teaches on 28x28 MNIST through `teacher.input` (resize and
renormalize) with `teacher.outputs: log_probs`, at alpha 1.0 (the student learns from the teacher alone).

Without the adapter the submit is a 422 that names `teacher.input.size` and says what to set. The data is
a subset of the real MNIST files uploaded as .npz (the built-in dataset has no subset option), so that the
ONNX teacher's 1-sample batches and the jobs stay short."""
from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.datasets.idx import read_idx
from kdcore.datasets.mnist import IDX_FILES, find_idx_file
from tests.harness import MNIST_DIR, Stack

pytestmark = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST files at {MNIST_DIR}")

# the job's data: the first N_TRAIN train images and the last N_TEST test images (the test file's second
# half is its cleaner one: the margin over 95 % holds for a teacher trained in seconds); the teacher
# trains on the next N_TEACHER train images
N_TRAIN, N_TEST, N_TEACHER = 4000, 2000, 16000
TEACHER_SIZE, TEACHER_MEAN, TEACHER_STD = (32, 32), 0.5, 0.5
ADAPTER = {"size": list(TEACHER_SIZE), "mean": [TEACHER_MEAN], "std": [TEACHER_STD]}


class LeNet(nn.Module):
    """LeNet-5 as other teams write it: 32x32 in, log-probabilities out."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5),
                                      nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84),
                                        nn.ReLU(), nn.Linear(84, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.classifier(self.features(x)), dim=1)


def _mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = (find_idx_file(MNIST_DIR, stem) for stem in IDX_FILES[split])
    assert images is not None and labels is not None
    return read_idx(images), read_idx(labels)


def _teacher_input(x: np.ndarray) -> torch.Tensor:
    """The other team's preprocessing: [0, 1] pixels, bilinear to 32x32, their own mean/std."""
    pixels = torch.from_numpy(x).float().div(255).unsqueeze(1)
    pixels = F.interpolate(pixels, size=TEACHER_SIZE, mode="bilinear", align_corners=False)
    return (pixels - TEACHER_MEAN) / TEACHER_STD


@pytest.fixture(scope="module")
def foreign(service: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The trained LeNet uploaded as .pt2 (batch bounded to [1, 16]) and as ONNX (batch fixed at 1), and
    the MNIST subset uploaded as .npz."""
    x_train, y_train = _mnist("train")
    x_test, y_test = _mnist("test")
    torch.manual_seed(0)
    model = LeNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    part = slice(N_TRAIN, N_TRAIN + N_TEACHER)
    xt, yt = _teacher_input(x_train[part]), torch.from_numpy(y_train[part]).long()
    for i in torch.randperm(len(xt)).split(32):  # one epoch
        opt.zero_grad()
        F.nll_loss(model(xt[i]), yt[i]).backward()
        opt.step()
    model.eval()
    x_test, y_test = x_test[-N_TEST:], y_test[-N_TEST:]
    with torch.no_grad():
        own = (model(_teacher_input(x_test)).argmax(1).numpy() == y_test).mean()
    assert own >= 0.95, own  # the teacher itself, on its own preprocessing

    d = tmp_path_factory.mktemp("foreign")
    example = _teacher_input(x_test[:2])
    ep = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=16)},))
    torch.export.save(ep, str(d / "lenet32.pt2"))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, as older tools use
        torch.onnx.export(model, (example[:1],), str(d / "lenet32.onnx"), dynamo=False, input_names=["input"])
    buf = io.BytesIO()
    np.savez(buf, x_train=x_train[:N_TRAIN], y_train=y_train[:N_TRAIN], x_test=x_test, y_test=y_test)
    with service.client() as http:
        arts = {name: _upload(http, name, data) for name, data in
                [("lenet32.pt2", (d / "lenet32.pt2").read_bytes()), ("lenet32.onnx", (d / "lenet32.onnx").read_bytes()),
                 ("mnist_subset.npz", buf.getvalue())]}
    return {"own_top1": float(own), **arts}


def _upload(http: Any, name: str, data: bytes) -> dict[str, Any]:
    r = http.post("/v1/artifacts", files={"file": (name, data)})
    assert r.status_code == 201, r.text
    return r.json()


def _spec(data: str, teacher: dict[str, Any]) -> dict[str, Any]:
    return {"name": "foreign-teacher", "teacher": teacher, "dataset": {"name": "npz", "artifact": data},
            "student": {"architecture": "mlp", "kwargs": {"hidden": [128]}},
            "distillation": {"method": "kd", "temperature": 4.0, "alpha": 1.0},
            "training": {"epochs": 3, "batch_size": 64, "lr": 0.05, "seed": 0}, "resources": {"device": "cpu"}}


def test_uploads_record_the_programs_input_constraints(foreign: dict[str, Any]) -> None:
    assert foreign["lenet32.pt2"]["meta"]["input"] == {"batch": "bounded", "batch_min": 1, "batch_max": 16,
                                                      "shape": [1, 32, 32], "dtype": "float32"}
    assert foreign["lenet32.onnx"]["meta"]["input"] == {"batch": "static", "batch_min": 1, "batch_max": 1,
                                                       "shape": [1, 32, 32], "dtype": "float32"}


def test_without_the_adapter_the_submit_says_what_to_set(service: Stack, foreign: dict[str, Any]) -> None:
    with service.client() as http:
        r = http.post("/v1/jobs", json=_spec(foreign["mnist_subset.npz"]["id"],
                                             {"checkpoint": foreign["lenet32.pt2"]["id"], "outputs": "log_probs"}))
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert [e["loc"] for e in errors] == [["body", "teacher", "input", "size"]]
    assert errors[0]["msg"] == ("teacher takes input (1, 32, 32) but dataset npz gives (1, 28, 28); "
                                "set teacher.input.size: [32, 32]")


@pytest.mark.parametrize("fmt", ["lenet32.pt2", "lenet32.onnx"])
def test_a_foreign_teacher_distils_through_its_adapter(service: Stack, foreign: dict[str, Any], fmt: str) -> None:
    teacher = {"checkpoint": foreign[fmt]["id"], "input": ADAPTER, "outputs": "log_probs"}
    job = service.wait(service.submit(_spec(foreign["mnist_subset.npz"]["id"], teacher)), 300)
    assert job["status"] == "succeeded", job["error"]
    rep = job["report"]
    # through the adapter the teacher scores on the service's 28x28 data as on its own 32x32 preprocessing
    assert rep["teacher"]["top1"] >= 0.95, rep["teacher"]
    assert abs(rep["teacher"]["top1"] - foreign["own_top1"]) <= 0.01
    assert rep["teacher_cache"] in ("built", "hit"), rep.get("teacher_cache")
    # alpha 1.0: the student learnt from the teacher's soft targets alone
    assert rep["student"]["top1"] > 0.85 and rep["agreement"] > 0.85, (rep["student"], rep["agreement"])
