"""The teacher-output cache on real data (digits): built once, hit by the next job, off with augmentation,
the same student with and without it, keys that change with what the outputs depend on."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from kdcore.checkpoints import load_student
from kdcore.digests import tensor_digest
from kdcore.spec import JobSpec
from kdcore.teacher_cache import BUILT, HIT, OFF_AUGMENT, OFF_DISABLED, OFF_FEATURES, OFF_LOGITS, cache_key
from kdcore.train import Teacher, run


def _spec(**over: Any) -> JobSpec:
    s: dict[str, Any] = {"teacher": {"job": "job_t"}, "student": {"architecture": "mlp", "kwargs": {"hidden": [32]}},
                         "dataset": {"name": "digits"},
                         "distillation": {"method": "kd", "temperature": 4, "alpha": 0.9},
                         "training": {"epochs": 2, "batch_size": 64, "lr": 0.05, "seed": 1},
                         "resources": {"device": "cpu", "precision": "fp32"}}
    s.update(over)
    return JobSpec.model_validate(s)


@pytest.fixture(scope="module")
def teacher_file(digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("teacher")
    run(_spec(teacher=None, distillation={"method": "none"}, student={"architecture": "mlp",
                                                                        "kwargs": {"hidden": [128]}}),
        digits, [], work)
    return work / "student.safetensors"


def _teacher(path: Path, checksum: str | None = "sha-of-the-teacher-file") -> Teacher:
    module, _ = load_student(path)
    return Teacher(module, params=1000, size_bytes=1, checksum=checksum)


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "teacher").rglob("*.safetensors")) if (cache / "teacher").exists() else []


def test_second_job_on_the_same_teacher_and_data_hits_the_cache(digits, teacher_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    events: list[tuple[str, dict]] = []
    first = run(_spec(), digits, [_teacher(teacher_file)], tmp_path / "a", cache_dir=cache)
    assert first["teacher_cache"] == f"{BUILT} (fp32 logits)"
    stored = _entries(cache)
    # the train split left after the validation split (for the loop), the validation split (the teacher's
    # reference for the rescues) and the test split (for the teacher's reported accuracy)
    assert len(stored) == 3

    # a sweep: another student and temperature on the same teacher and data reuse both entries
    second = run(_spec(student={"architecture": "mlp", "kwargs": {"hidden": [16]}},
                       distillation={"method": "kd", "temperature": 2, "alpha": 0.5}),
                 digits, [_teacher(teacher_file)], tmp_path / "b", lambda k, d: events.append((k, d)), cache_dir=cache)
    assert second["teacher_cache"] == f"{HIT} (fp32 logits)"
    assert _entries(cache) == stored
    assert any(k == "log" and d["message"].startswith("teacher cache: hit") for k, d in events)
    assert second["teacher"]["top1"] == first["teacher"]["top1"] > 0.8
    assert second["student"]["top1"] > 0.5

    # random augmentation: the teacher's input changes every step, so it runs every step
    aug = run(_spec(dataset={"name": "digits", "augment": "standard"}), digits, [_teacher(teacher_file)],
              tmp_path / "c", cache_dir=cache)
    assert aug["teacher_cache"] == OFF_AUGMENT
    assert _entries(cache) == stored
    # another teacher file (checksum) is another entry
    other = run(_spec(), digits, [_teacher(teacher_file, checksum="another-file")], tmp_path / "d", cache_dir=cache)
    assert other["teacher_cache"].startswith(BUILT) and len(_entries(cache)) == 6


def test_cached_and_per_step_teacher_train_the_same_student(digits, teacher_file: Path, tmp_path: Path) -> None:
    cached = run(_spec(), digits, [_teacher(teacher_file)], tmp_path / "cached", cache_dir=tmp_path / "cache")
    per_step = run(_spec(), digits, [_teacher(teacher_file)], tmp_path / "per_step", teacher_cache=False)
    assert cached["teacher_cache"].startswith(BUILT) and per_step["teacher_cache"] == OFF_DISABLED
    a, _ = load_student(tmp_path / "cached" / "student.safetensors")
    b, _ = load_student(tmp_path / "per_step" / "student.safetensors")
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        # teacher logits from one big batch vs batches of 64 differ only in float rounding
        torch.testing.assert_close(wa, wb, rtol=1e-4, atol=1e-5, msg=name)
    assert cached["student"]["top1"] == pytest.approx(per_step["student"]["top1"], abs=2 / 360)
    assert [e["train_loss"] for e in cached["epochs"]] == pytest.approx(
        [e["train_loss"] for e in per_step["epochs"]], rel=1e-4)


def test_feature_methods_cache_features_within_the_budget(digits, teacher_file: Path, tmp_path: Path) -> None:
    spec = _spec(distillation={"method": "fitnets", "temperature": 4, "alpha": 0.9})
    rep = run(spec, digits, [_teacher(teacher_file)], tmp_path / "a", cache_dir=tmp_path / "cache")
    assert rep["teacher_cache"].startswith(BUILT) and rep["student"]["top1"] > 0.5
    keys = set()
    for path in _entries(tmp_path / "cache"):
        with safe_open(str(path), "pt") as f:
            keys |= set(f.keys())
    assert "feature:body" in keys  # the teacher's last hidden block, paired automatically
    # the budget holds the train split's logits (1293 x 10 float32 = 51,720 bytes: 1437 less the 144 held out
    # for validation) but not the features too
    small = run(spec, digits, [_teacher(teacher_file)], tmp_path / "b", cache_dir=tmp_path / "cache2",
                cache_max_bytes=60_000)
    assert small["teacher_cache"] == OFF_FEATURES and small["student"]["top1"] > 0.5
    # a budget below the fp32 logits but above them in bf16 (25,860 bytes): kept in bf16, said in the report
    half = run(_spec(), digits, [_teacher(teacher_file)], tmp_path / "c", cache_dir=tmp_path / "cache3",
               cache_max_bytes=50_000)
    assert half["teacher_cache"] == f"{BUILT} (bf16 logits)" and half["student"]["top1"] > 0.5
    # below even that (and 10 classes are too few for top-k): the teacher runs at every step, and the report
    # says why
    tiny = run(_spec(), digits, [_teacher(teacher_file)], tmp_path / "d", cache_dir=tmp_path / "cache4",
               cache_max_bytes=25_000)
    assert tiny["teacher_cache"] == OFF_LOGITS and tiny["student"]["top1"] > 0.5
    assert len(_entries(tmp_path / "cache4")) == 2  # only the test and validation splits' logits (scoring)


def test_the_key_names_teacher_data_layers_and_precision(digits) -> None:
    d = tensor_digest(digits.x_train)
    base = cache_key(["t1"], d, [], "fp32", "cpu")
    assert base == cache_key(["t1"], tensor_digest(digits.x_train.clone()), [], "fp32", "cpu")
    changed = digits.x_train.clone()
    changed[0, 0, 0, 0] += 1e-3
    others = [cache_key(["t2"], d, [], "fp32", "cpu"), cache_key(["t1"], tensor_digest(changed), [], "fp32", "cpu"),
              cache_key(["t1"], d, ["body"], "fp32", "cpu"), cache_key(["t1"], d, [], "bf16", "cpu"),
              cache_key(["t1"], d, [], "fp32", "cuda"), cache_key(["t1", "t2"], d, [], "fp32", "cpu"),
              cache_key(["t1"], d, [], "fp32", "cpu", transform="standard"),
              cache_key(["t1"], d, [], "fp32", "cpu", logits="bf16")]
    assert len({base, *others}) == len(others) + 1


def test_teacher_identity_without_a_checksum_hashes_the_weights(teacher_file: Path) -> None:
    a, b = _teacher(teacher_file, None), _teacher(teacher_file, None)
    assert a.cache_id() == b.cache_id() and a.cache_id().startswith("weights-")
    with torch.no_grad():
        next(b.module.parameters())[0, 0] += 1.0
    assert a.cache_id() != b.cache_id()
    assert _teacher(teacher_file, "abc").cache_id() != _teacher(teacher_file, "abd").cache_id()


def test_compile_that_fails_falls_back_to_eager(digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.config as inductor_config

    # a worker without a working C++ compiler: inductor cannot build its CPU kernels
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-c++")))
    events: list[tuple[str, dict]] = []
    spec = _spec(teacher=None, distillation={"method": "none"}, training={"epochs": 1, "batch_size": 64, "lr": 0.05},
                 resources={"device": "cpu", "precision": "fp32", "compile": True})
    rep = run(spec, digits, [], tmp_path / "job", lambda k, d: events.append((k, d)))
    assert rep["compile"].startswith("failed") and rep["compile"].endswith("eager")
    assert any(k == "log" and d["message"].startswith("torch.compile failed") for k, d in events)
    assert rep["student"]["top1"] > 0.5 and "teacher_cache" not in rep


def test_auto_precision_runs_the_teacher_in_bf16_only_on_cpus_with_native_bf16(digits, teacher_file: Path,
                                                                               tmp_path: Path) -> None:
    from kdcore.hardware import cpu_has_fast_bf16

    expected = "bf16" if cpu_has_fast_bf16() else "fp32"
    for augment, status in (("none", BUILT), ("standard", OFF_AUGMENT)):  # cached, and per step
        dataset = {"name": "digits", "augment": augment}
        fp32 = run(_spec(dataset=dataset), digits, [_teacher(teacher_file)], tmp_path / f"fp32-{augment}",
                   cache_dir=tmp_path / "cache")
        rep = run(_spec(resources={"device": "cpu", "precision": "auto"}, dataset=dataset),
                  digits, [_teacher(teacher_file)], tmp_path / augment, cache_dir=tmp_path / "cache")
        assert fp32["teacher_precision"] == "fp32"
        assert rep["precision"] == "fp32" and rep["teacher_precision"] == expected
        # the same precision as the fp32 job's teacher (a CPU without native bf16): its entry is hit
        assert rep["teacher_cache"].startswith(HIT if status == BUILT and expected == "fp32" else status)
        # the student trains in fp32 either way; bf16 soft targets move its accuracy by a few samples at most
        assert rep["student"]["top1"] == pytest.approx(fp32["student"]["top1"], abs=0.02)
