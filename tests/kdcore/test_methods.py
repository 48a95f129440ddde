"""Each distillation method: its loss against a hand computation on small tensors, gradients reaching only
the student (and the method's own modules), the teacher left in eval mode and unchanged, and a short
real run on the digits data through kdcore.train.run."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdcore.datasets import load_dataset
from kdcore.losses import dkd_terms, teacher_log_probs
from kdcore.methods import METHODS, Distiller, TeacherOutput, attention_map, method_catalog
from kdcore.models import create_model
from kdcore.schedules import ScheduleSpec
from kdcore.spec import JobSpec
from kdcore.train import JobError, Teacher, run


def _softmax(row: list[float], t: float) -> list[float]:
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


ZS = [[2.0, 0.5, -1.0, 0.3], [0.1, 0.2, 0.3, -0.4]]
ZT = [[3.0, -1.0, 0.0, 0.5], [-0.5, 1.5, 0.2, 0.1]]
Y = [0, 2]


def test_dkd_terms_match_hand_computation() -> None:
    t = 2.0
    tckd, nckd = dkd_terms(torch.tensor(ZS), teacher_log_probs(torch.tensor(ZT), t), torch.tensor(Y), t)
    want_t = want_n = 0.0
    for zs, zt, y in zip(ZS, ZT, Y, strict=True):
        ps, pt = _softmax(zs, t), _softmax(zt, t)
        want_t += _kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        nps = [p / (1 - ps[y]) for i, p in enumerate(ps) if i != y]
        npt = [p / (1 - pt[y]) for i, p in enumerate(pt) if i != y]
        want_n += _kl(npt, nps)
    assert tckd.item() == pytest.approx(t * t * want_t / 2, rel=1e-5)
    assert nckd.item() == pytest.approx(t * t * want_n / 2, rel=1e-5)


def test_dkd_decomposes_classic_kd() -> None:
    # KD = TCKD + (1 - p_t[target]) * NCKD, per sample (Zhao et al. 2022, eq. 7)
    zs, zt, y, t = torch.randn(1, 6), torch.randn(1, 6), torch.tensor([3]), 3.0
    log_pt = teacher_log_probs(zt, t)
    tckd, nckd = dkd_terms(zs, log_pt, y, t)
    kd = F.kl_div(F.log_softmax(zs / t, 1), log_pt, reduction="batchmean", log_target=True) * t * t
    assert kd.item() == pytest.approx((tckd + (1 - log_pt[0, 3].exp()) * nckd).item(), rel=1e-5)


def test_several_teachers_average_their_probabilities_with_weights() -> None:
    z = torch.tensor([ZT, ZS])  # two "teachers", [2, B, C]
    t, w = 3.0, [0.25, 0.75]
    got = teacher_log_probs(z, t, torch.tensor(w)).exp()
    for b in range(2):
        want = [w[0] * a + w[1] * c for a, c in zip(_softmax(ZT[b], t), _softmax(ZS[b], t), strict=True)]
        assert got[b].tolist() == pytest.approx(want, rel=1e-5)


def test_attention_map_by_hand() -> None:
    f = torch.tensor([[[[1.0, 2.0], [0.0, 3.0]], [[1.0, 0.0], [2.0, 1.0]]]])  # [1, 2, 2, 2]
    q = [(1 + 1) / 2, (4 + 0) / 2, (0 + 4) / 2, (9 + 1) / 2]  # channel mean of f^2
    norm = math.sqrt(sum(v * v for v in q))
    assert attention_map(f, 2.0).flatten().tolist() == pytest.approx([v / norm for v in q], rel=1e-6)
    # against flat features: one value per channel, pooled to a common count
    units = attention_map(f, 2.0, 2).flatten().tolist()
    per_channel = [(1 + 4 + 0 + 9) / 4, (1 + 0 + 4 + 1) / 4]
    n2 = math.sqrt(sum(v * v for v in per_channel))
    assert units == pytest.approx([v / n2 for v in per_channel], rel=1e-6)


class _Tiny(nn.Module):
    """A conv net with named stages, so that feature methods find `body` by default."""

    def __init__(self, width: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(self.pool(self.body(x))))


def _make(method: str, params: dict[str, Any] | None = None, teachers: int = 1) -> Distiller:
    spec_params = JobSpec.model_validate({
        "teacher": [{"checkpoint": "art_x"}] * teachers if method != "dml" else None,
        "student": {"architecture": "mlp"}, "dataset": {"name": "digits"},
        "distillation": {"method": method, "params": params or {}}}).distillation.params
    ts = [_Tiny(8, 10 + i) for i in range(teachers)] if method != "dml" else []
    extra = {"peer": _Tiny(4, 2)} if method == "dml" else {}
    d = METHODS.create(method, _Tiny(4, 1), ts, 2.0, 0.7, spec_params, **extra)
    d.setup(torch.randn(4, 1, 6, 6))
    return d


@pytest.mark.parametrize("method,teachers", [("kd", 1), ("kd", 2), ("dkd", 1), ("dkd", 2), ("fitnets", 1),
                                             ("at", 1), ("dml", 0)])
def test_gradients_reach_only_the_student_and_the_teacher_stays_frozen(method: str, teachers: int) -> None:
    d = _make(method, teachers=teachers)
    before = [copy.deepcopy(t.state_dict()) for t in d.teachers]
    d.train()
    x, y = torch.randn(5, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    z, terms = d.forward_train(x, y, 2.0)
    assert z.shape == (5, 3) and terms and all(v.ndim == 0 and torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    for t, sd in zip(d.teachers, before, strict=True):
        assert not t.training  # eval mode: batch-norm statistics untouched
        assert all(p.grad is None and not p.requires_grad for p in t.parameters())
        after = t.state_dict()
        assert all(torch.equal(sd[k], after[k]) for k in sd)  # running stats included
    trainable = d.trainable_parameters()
    assert trainable and all(p.grad is not None for p in d.student.parameters())
    assert {id(p) for p in trainable} == {id(p) for p in d.parameters()}  # no teacher weight among them
    if method == "fitnets":
        assert all(p.grad is not None for p in d.regressors.parameters())
    if method == "dml":
        assert all(p.grad is not None for p in d.peer.parameters())


def test_kd_terms_by_hand_with_a_cached_teacher_output() -> None:
    d = METHODS.create("kd", nn.Identity(), [], 2.0, 0.7, {})
    zs = torch.tensor(ZS, requires_grad=True)
    t_out = TeacherOutput(torch.tensor([ZT]))
    _, terms = d.forward_train(zs, torch.tensor(Y), 0.0, t_out)
    kl = sum(_kl(_softmax(zt, 2.0), _softmax(zs_, 2.0)) for zs_, zt in zip(ZS, ZT, strict=True)) / 2
    ce = sum(-math.log(_softmax(zs_, 1.0)[y]) for zs_, y in zip(ZS, Y, strict=True)) / 2
    assert terms["soft"].item() == pytest.approx(0.7 * 4 * kl, rel=1e-5)
    assert terms["hard"].item() == pytest.approx(0.3 * ce, rel=1e-5)


def test_fitnets_hint_is_the_mse_of_the_regressed_student_feature() -> None:
    d = _make("fitnets", {"hint_weight": 3.0, "kd": False})
    assert d.pairs == [("body", "body")]
    x, y = torch.randn(3, 1, 6, 6), torch.tensor([0, 1, 2])
    d.eval()  # fixed batch-norm behaviour, so the hand computation sees the same numbers
    _, terms = d.forward_train(x, y, 1.0)
    with torch.no_grad():
        f_t = d.teachers[0].body(x)
        f_s = d.student.body(x)
        want = F.mse_loss(d.regressors[0](f_s), f_t)
    assert set(terms) == {"ce", "hint"}
    assert terms["hint"].item() == pytest.approx(3.0 * want.item(), rel=1e-5)


def test_at_term_by_hand() -> None:
    d = _make("at", {"beta": 10.0, "kd": False})
    x, y = torch.randn(3, 1, 6, 6), torch.tensor([0, 1, 2])
    d.eval()
    _, terms = d.forward_train(x, y, 1.0)
    with torch.no_grad():
        a_t = d.teachers[0].body(x).pow(2).mean(1).flatten(1)
        a_s = d.student.body(x).pow(2).mean(1).flatten(1)
        want = (F.normalize(a_s, dim=1) - F.normalize(a_t, dim=1)).pow(2).mean()
    assert terms["attention"].item() == pytest.approx(10.0 * want.item(), rel=1e-5)


def test_dml_students_learn_from_each_other_without_a_teacher() -> None:
    d = _make("dml")
    x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 2, 0])
    d.eval()
    _, terms = d.forward_train(x, y, 0.0)
    with torch.no_grad():
        z1, z2 = d.student(x), d.peer(x)
        kl12 = F.kl_div(F.log_softmax(z1 / 2, 1), F.log_softmax(z2 / 2, 1), reduction="batchmean", log_target=True)
    assert terms["soft"].item() == pytest.approx(0.7 * 4 * kl12.item(), rel=1e-5)
    assert set(terms) == {"hard", "soft", "peer_hard", "peer_soft"}


def test_named_layers_override_and_unknown_layer_names_the_choices() -> None:
    d = _make("fitnets", {"pairs": [{"teacher": "body.0", "student": "body.2"}]})
    assert d.pairs == [("body.0", "body.2")]
    with pytest.raises(ValueError, match="no layer 'layer9'.*body"):
        _make("at", {"pairs": [{"teacher": "layer9", "student": "body"}]})


def test_feature_methods_pair_any_two_registry_architectures_by_default() -> None:
    x = torch.randn(4, 3, 32, 32)
    for t_arch, s_arch in [("cifar_resnet20", "mlp"), ("convnet", "cifar_resnet8x4"), ("resnet18", "lenet5"),
                           ("mlp", "convnet")]:
        teacher = create_model(t_arch, num_classes=10, in_channels=3, input_size=(32, 32))
        for method in ("fitnets", "at"):
            student = create_model(s_arch, num_classes=10, in_channels=3, input_size=(32, 32), **(
                {"hidden": [32]} if s_arch == "mlp" else {}))
            params = JobSpec.model_validate({"teacher": {"checkpoint": "a"}, "student": {"architecture": "mlp"},
                                             "dataset": {"name": "cifar10"},
                                             "distillation": {"method": method}}).distillation.params
            d = METHODS.create(method, student, [teacher], 4.0, 0.9, params)
            d.setup(x)
            d.train()
            _, terms = d.forward_train(x, torch.tensor([0, 1, 2, 3]), 0.5)
            sum(terms.values()).backward()
            assert all(torch.isfinite(v) for v in terms.values()), (t_arch, s_arch, method)


def test_features_from_an_exported_teacher(tmp_path: Path) -> None:
    from kdcore.checkpoints import load_teacher

    model = create_model("cifar_resnet20", num_classes=10, in_channels=3, input_size=(32, 32)).eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, tmp_path / "t.pt2")
    teacher = load_teacher(tmp_path / "t.pt2", "export", architecture=None, kwargs={}, num_classes=10,
                           in_channels=3, input_size=(32, 32), device=torch.device("cpu"))
    student = create_model("cifar_resnet8x4", num_classes=10, in_channels=3, input_size=(32, 32))
    d = METHODS.create("fitnets", student, [teacher], 4.0, 0.9, {"pairs": [], "hint_weight": 1.0, "kd": True})
    x = torch.randn(3, 3, 32, 32)
    d.setup(x)
    assert d.pairs == [("layer3", "layer3")]
    out = d.teacher_forward(x)
    with torch.no_grad():
        want = model.layer3(model.layer2(model.layer1(model.stem(x))))
    assert torch.allclose(out.features["layer3"], want, atol=1e-5)
    assert torch.allclose(out.logits[0], model(x), atol=1e-5)


def test_catalog_lists_every_method_with_its_parameter_schema() -> None:
    cat = {m["name"]: m for m in method_catalog()}
    assert {"none", "kd", "dkd", "fitnets", "at", "dml"} <= set(cat)
    assert set(cat["dkd"]["params"]["properties"]) == {"alpha", "beta", "warmup_epochs"}
    assert "pairs" in cat["fitnets"]["params"]["properties"] and not cat["fitnets"]["logits_only"]
    assert cat["kd"]["multi_teacher"] and not cat["dml"]["needs_teacher"]
    assert all(m["paper"] for name, m in cat.items() if name != "none")


def test_schedules_move_temperature_and_alpha_over_the_epochs() -> None:
    s = ScheduleSpec.model_validate({"temperature": {"kind": "linear", "start": 8, "end": 2},
                                     "alpha": {"kind": "step", "start": 0.9, "milestones": [2, 3], "gamma": 0.5},
                                     "warmup_epochs": 2})
    assert [s.temperature_at(4.0, e, 4) for e in (0, 2, 4)] == pytest.approx([8, 5, 2])
    assert [s.alpha_at(0.5, e, 4) for e in (0, 1.9, 2, 3.5)] == pytest.approx([0.9, 0.9, 0.45, 0.225])
    assert [s.warmup_at(e) for e in (0, 1, 3)] == pytest.approx([0, 0.5, 1])
    cos = ScheduleSpec.model_validate({"temperature": {"kind": "cosine", "start": 1, "end": 3}})
    assert cos.temperature_at(4.0, 5, 10) == pytest.approx(2.0)
    sig = ScheduleSpec.model_validate({"alpha": {"kind": "sigmoid", "start": 0, "end": 1}})
    vals = [sig.alpha_at(0.9, e, 10) for e in range(11)]
    assert vals[0] == pytest.approx(0) and vals[5] == pytest.approx(0.5) and vals[10] == pytest.approx(1)
    assert vals == sorted(vals)
    assert ScheduleSpec().temperature_at(4.0, 3, 10) == 4.0  # no schedule: the constant value
    with pytest.raises(ValueError, match="milestones"):
        ScheduleSpec.model_validate({"alpha": {"kind": "step"}})
    with pytest.raises(ValueError, match=r"alpha.end must be in \[0, 1\]"):
        ScheduleSpec.model_validate({"alpha": {"kind": "linear", "end": 2}})


# ---- short real runs on the digits data -----------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory):
    return load_dataset("digits", tmp_path_factory.mktemp("root"))


@pytest.fixture(scope="module")
def conv_teacher(digits, tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    spec = JobSpec.model_validate({"student": {"architecture": "convnet", "kwargs": {"channels": [16, 32]}},
                                   "dataset": {"name": "digits"}, "distillation": {"method": "none"},
                                   "training": {"epochs": 4, "batch_size": 64, "lr": 0.05}})
    out = tmp_path_factory.mktemp("teacher")
    rep = run(spec, digits, [], out)
    assert rep["student"]["top1"] > 0.8
    from kdcore.checkpoints import load_student
    return load_student(out / "student.safetensors")[0]


@pytest.mark.parametrize("method,params,schedule", [
    ("dkd", {"warmup_epochs": 1}, {}),
    ("fitnets", {}, {}),
    ("at", {}, {"warmup_epochs": 1}),
    ("kd", {}, {"temperature": {"kind": "linear", "start": 8, "end": 2}, "alpha": {"kind": "cosine", "start": 0.5}}),
])
def test_each_method_trains_a_student_on_real_data(digits, conv_teacher, tmp_path: Path, method: str,
                                                   params: dict[str, Any], schedule: dict[str, Any]) -> None:
    spec = JobSpec.model_validate({
        "teacher": {"checkpoint": "art_x"}, "student": {"architecture": "mlp", "kwargs": {"hidden": [64]}},
        "dataset": {"name": "digits"}, "distillation": {"method": method, "params": params, "schedule": schedule},
        "training": {"epochs": 3, "batch_size": 64, "lr": 0.05}})
    rep = run(spec, digits, [Teacher(conv_teacher, 1, 1)], tmp_path)
    assert rep["student"]["top1"] > 0.7, rep["epochs"]
    assert rep["method"] == method and len(rep["epochs"]) == 3
    if schedule.get("temperature"):
        temps = [e["temperature"] for e in rep["epochs"]]
        assert temps == sorted(temps, reverse=True) and 2 < temps[-1] < temps[0] < 8


def test_two_weighted_teachers_and_dml_peer_in_the_report(digits, conv_teacher, tmp_path: Path) -> None:
    spec = JobSpec.model_validate({
        "teacher": [{"checkpoint": "a", "weight": 3}, {"checkpoint": "b", "weight": 1}],
        "student": {"architecture": "mlp", "kwargs": {"hidden": [64]}}, "dataset": {"name": "digits"},
        "distillation": {"method": "kd"}, "training": {"epochs": 2, "batch_size": 64, "lr": 0.05}})
    other = create_model("mlp", num_classes=10, in_channels=1, input_size=(8, 8), hidden=[32])
    rep = run(spec, digits, [Teacher(conv_teacher, 1, 1), Teacher(other, 1, 1)], tmp_path / "multi")
    assert rep["teacher"]["count"] == 2 and rep["teacher"]["weights"] == [3.0, 1.0]
    assert rep["student"]["top1"] > 0.7
    dml = JobSpec.model_validate({
        "student": {"architecture": "mlp", "kwargs": {"hidden": [64]}}, "dataset": {"name": "digits"},
        "distillation": {"method": "dml", "alpha": 0.5, "temperature": 1.0,
                         "params": {"peer_architecture": "lenet5"}},
        "training": {"epochs": 2, "batch_size": 64, "lr": 0.05}, "baseline": True})
    rep = run(dml, digits, [], tmp_path / "dml")
    assert rep["peer"]["architecture"] == "lenet5" and rep["peer"]["top1"] > 0.3
    assert (tmp_path / "dml" / "peer.safetensors").is_file() and "kd_gain" in rep


def test_a_feature_method_resumes_with_its_regressor(digits, conv_teacher, tmp_path: Path) -> None:
    spec = JobSpec.model_validate({
        "teacher": {"checkpoint": "art_x"}, "student": {"architecture": "mlp", "kwargs": {"hidden": [64]}},
        "dataset": {"name": "digits"}, "distillation": {"method": "fitnets"},
        "training": {"epochs": 2, "batch_size": 64, "lr": 0.05}})
    full = run(spec, digits, [Teacher(conv_teacher, 1, 1)], tmp_path / "full")
    stop_after = {"n": 0}

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "epoch":
            stop_after["n"] += 1

    from kdcore.train import Cancelled
    with pytest.raises(Cancelled):
        run(spec, digits, [Teacher(conv_teacher, 1, 1)], tmp_path / "part", on_event,
            should_stop=lambda: stop_after["n"] >= 1)
    resumed = run(spec, digits, [Teacher(conv_teacher, 1, 1)], tmp_path / "part")
    assert resumed["student"]["top1"] == pytest.approx(full["student"]["top1"], abs=1e-9)


def test_bad_layer_name_fails_the_job_clearly(digits, conv_teacher, tmp_path: Path) -> None:
    spec = JobSpec.model_validate({
        "teacher": {"checkpoint": "art_x"}, "student": {"architecture": "mlp", "kwargs": {"hidden": [64]}},
        "dataset": {"name": "digits"},
        "distillation": {"method": "at", "params": {"pairs": [{"teacher": "nope", "student": "body"}]}},
        "training": {"epochs": 1}})
    with pytest.raises(JobError, match="no layer 'nope'") as e:
        run(spec, digits, [Teacher(conv_teacher, 1, 1)], tmp_path)
    assert e.value.code == "bad_params"
