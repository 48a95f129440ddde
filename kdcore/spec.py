"""The JobSpec: what a user asks for, validated against the registries before anything runs.

Pydantic models with `extra="forbid"`, so a misspelt field is an error rather than a silent default.
Names (architecture, dataset, method) are checked here by field validators so that the error's
location is the field itself; checks that need two fields at once (a kwarg contradicting the
dataset's class count) live in `semantic_errors`, which returns (loc, msg) pairs for the API.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from kdcore.datasets import DATASETS
from kdcore.methods import METHODS
from kdcore.models import MODELS
from kdcore.registry import UnknownNameError
from kdcore.schedules import ScheduleSpec

_FORBID = ConfigDict(extra="forbid")


def _known(registry: Any, name: str) -> str:
    if name not in registry:
        raise ValueError(str(UnknownNameError(registry.kind, name, registry.names())))
    return name


class TeacherInput(BaseModel):
    """What this teacher takes, when it is not the dataset's own input: the adapter from the dataset's
    pixels (scaled to [0, 1], after the dataset's own resizing) to the teacher's input. Applied in the
    teacher path only; the student keeps the dataset's input."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"size": [32, 32], "mean": [0.5], "std": [0.5]}, {"channels": 3, "size": [224, 224],
                      "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}]})

    size: tuple[Annotated[int, Field(ge=1, le=4096)], Annotated[int, Field(ge=1, le=4096)]] | None = Field(
        None, description="[H, W] the teacher takes; the images are resized bilinearly (antialiased when "
        "shrinking). Default: the dataset's size")
    mean: list[float] | None = Field(None, min_length=1, max_length=3, description="the teacher's "
                                     "normalization, per channel (one value: every channel): x = (pixel - mean) "
                                     "/ std on pixels in [0, 1]. Default (with std): the dataset's own")
    std: list[Annotated[float, Field(gt=0)]] | None = Field(None, min_length=1, max_length=3,
                                                            description="see mean; given together with it")
    channels: Literal[1, 3] | None = Field(None, description="channels the teacher takes: 1 -> 3 repeats the "
                                           "grey channel, 3 -> 1 takes the luminance (ITU-R BT.601). Default: "
                                           "the dataset's")

    @model_validator(mode="after")
    def _mean_with_std(self) -> TeacherInput:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give `mean` and `std` together (the teacher's normalization); leave both out to "
                             "keep the dataset's")
        return self


class TeacherSpec(BaseModel):
    """One teacher: an uploaded checkpoint, or the student of an earlier job."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"job": "job_0123456789abcdef"},
                     {"checkpoint": "art_0123456789abcdef", "architecture": "mlp",
                      "kwargs": {"hidden": [1200, 1200]}}]})

    checkpoint: str | None = Field(None, description="id of an uploaded artifact (art_…): .safetensors or "
                                   ".pt/.pth state dict (needs `architecture`), .pt2 torch.export program, .onnx")
    job: str | None = Field(None, description="id of an earlier succeeded job whose student becomes this teacher")
    architecture: str | None = Field(None, description="registry name, needed when the checkpoint is a state dict")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="architecture kwargs; class count and "
                                   "input channels default to the dataset's")
    weight: float = Field(1.0, gt=0, le=1000, description="with several teachers: this one's share of the "
                          "averaged soft targets (weights are normalized to sum to 1)")
    input: TeacherInput | None = Field(None, description="what this teacher takes when it differs from the "
                                       "dataset's input (size, normalization, channels); see docs/spec.md")
    outputs: Literal["logits", "log_probs", "probs"] = Field(
        "logits", description="what the teacher's last layer gives: logits, log-probabilities (a model ending "
        "in log_softmax) or probabilities (ending in softmax; turned into log-probabilities in float32)")

    @field_validator("architecture")
    @classmethod
    def _arch_known(cls, v: str | None) -> str | None:
        return None if v is None else _known(MODELS, v)

    @model_validator(mode="after")
    def _one_source(self) -> TeacherSpec:
        if (self.checkpoint is None) == (self.job is None):
            raise ValueError("a teacher needs exactly one source: `checkpoint` (an uploaded artifact id) "
                             "or `job` (an earlier job's id)")
        if self.job is not None and (self.architecture or self.kwargs):
            raise ValueError("a `job` teacher takes its architecture from that job; drop `architecture`/`kwargs`")
        return self


class StudentSpec(BaseModel):
    model_config = _FORBID

    architecture: str = Field(description="registry name, see GET /v1/catalog")
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("architecture")
    @classmethod
    def _arch_known(cls, v: str) -> str:
        return _known(MODELS, v)


class DatasetSpec(BaseModel):
    model_config = _FORBID

    name: str = Field(description="digits | mnist | fashion_mnist | cifar10 | cifar100 | npz")
    artifact: str | None = Field(None, description="uploaded .npz artifact id, for `npz`")
    augment: Literal["none", "standard"] = Field(
        "none", description="standard: random crop+flip for CIFAR-like data, small shifts for MNIST-like")
    image_size: tuple[Annotated[int, Field(ge=8, le=1024)], Annotated[int, Field(ge=8, le=1024)]] | None = Field(
        None, description="[H, W] the images are prepared at (uploaded image folders): the shorter side scaled "
        "to cover it, then a center crop; default: the most common size of the train images")
    channels: Literal[1, 3] | None = Field(
        None, description="uploaded image folders: 1 (grayscale) or 3 (RGB); default: 1 when every image is "
        "grayscale, else 3")

    @field_validator("name")
    @classmethod
    def _name_known(cls, v: str) -> str:
        return _known(DATASETS, v)

    @model_validator(mode="after")
    def _artifact_matches(self) -> DatasetSpec:
        needs = DATASETS.get(self.name).meta.get("needs_artifact", False)
        if needs and not self.artifact:
            raise ValueError(f"dataset {self.name!r} needs `artifact`: the id of an uploaded file")
        if not needs and self.artifact:
            raise ValueError(f"dataset {self.name!r} is built in; `artifact` is only for uploaded data (npz)")
        if (self.image_size is not None or self.channels is not None) and not DATASETS.get(self.name).meta.get(
                "resizable"):
            raise ValueError(f"`image_size` and `channels` apply to uploaded image folders (imagefolder); dataset "
                             f"{self.name!r} keeps its own format")
        return self


class DistillationSpec(BaseModel):
    model_config = _FORBID

    method: str = Field("kd", description="none (labels only) | kd (Hinton et al. 2015) | …, see the catalog")
    temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature T of the soft term")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft (teacher) term; (1 - alpha) weighs "
                         "the hard-label cross-entropy: L = alpha*T^2*KL(p_t||p_s) + (1-alpha)*CE")
    params: dict[str, Any] = Field(default_factory=dict, validate_default=True,
                                   description="method-specific parameters, see GET /v1/catalog")
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec, description="temperature / alpha schedules "
                                   "over the epochs and a warm-up of the soft term; see docs/methods.md")

    @field_validator("method")
    @classmethod
    def _method_known(cls, v: str) -> str:
        return _known(METHODS, v)

    @field_validator("params")
    @classmethod
    def _params_valid(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        method = info.data.get("method")
        if method is None:  # the method itself was invalid; that error is the one to read
            return v
        model = METHODS.get(method).meta.get("params")
        if model is None:
            if v:
                raise ValueError(f"method {method!r} takes no params")
            return v
        try:
            return model.model_validate(v).model_dump()
        except ValidationError as e:  # keep the parameter's own path in the message
            raise ValueError("; ".join(
                f"{'.'.join(str(x) for x in err['loc']) or 'params'}: {err['msg'].removeprefix('Value error, ')}"
                for err in e.errors())) from None


class TrainingSpec(BaseModel):
    model_config = _FORBID

    epochs: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=65536)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.1, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5.0e-4, ge=0, le=1)
    lr_schedule: Literal["cosine", "step", "constant"] = Field(
        "cosine", description="cosine to 0 over all steps; step: x0.1 at 50% and 75% of the epochs")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    validation: float = Field(
        0.1, ge=0, le=1_000_000, description="held out of the train split for every choice the loop makes "
        "(keep best, rescues): below 1 a fraction (at most 0.5), from 1 a whole count of samples; 0 turns it off. "
        "Seeded by `seed`, stratified by class; the test split is only reported, never chosen on")
    keep: Literal["last", "best"] = Field(
        "last", description="which weights become the student: the last epoch's, or the epoch with the highest "
        "validation top-1 (needs `validation`)")
    max_rescues: int = Field(3, ge=0, le=10, description="divergence rescues (roll back to the last good state, "
                             "halve the learning rate, go on) before the job fails with `diverged`")
    grad_clip: float | None = Field(None, gt=0, le=1e6, description="clip the gradient's global L2 norm to this "
                                    "value before each step; null: no clipping")

    @field_validator("validation")
    @classmethod
    def _validation_form(cls, v: float) -> float:
        if 0.5 < v < 1:
            raise ValueError("a validation fraction is at most 0.5 (values from 1 are a count of samples)")
        if v >= 1 and v != int(v):
            raise ValueError("a validation count (a value from 1) is a whole number of samples")
        return v

    @model_validator(mode="after")
    def _keep_needs_validation(self) -> TrainingSpec:
        if self.keep == "best" and self.validation == 0:
            raise ValueError("`keep: best` chooses by validation top-1; it needs `validation` above 0")
        return self


class ResourcesSpec(BaseModel):
    model_config = _FORBID

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="cuda routes the job to the gpu queue; auto runs on a GPU when the worker has one")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA GPUs that support it, fp32 elsewhere")
    compile: bool = Field(False, description="torch.compile the student; a compile that fails "
                          "falls back to eager with a log event. Pays off on long GPU jobs")


class ExportSpec(BaseModel):
    """Deployable files made after training (kdcore.export_phase; docs/spec.md)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"formats": ["onnx", "pt2"], "int8": False, "latency": True}]})

    formats: list[Literal["onnx", "pt2"]] = Field(default_factory=lambda: ["onnx", "pt2"], max_length=2,
                                                  description="student.onnx (onnxruntime) and/or student.pt2 "
                                                  "(torch.export), each checked against the trained student")
    int8: bool = Field(False, description="also student.int8.onnx (onnxruntime dynamic quantization), with its "
                       "test accuracy in the report; needs `onnx` in formats")
    latency: bool = Field(True, description="time teacher and student at batch 1 and 64 on the job's device "
                          "(median of repeated runs) and report the speed-up")

    @model_validator(mode="after")
    def _int8_needs_onnx(self) -> ExportSpec:
        self.formats = list(dict.fromkeys(self.formats))
        if self.int8 and "onnx" not in self.formats:
            raise ValueError('`int8` quantizes the ONNX model: add "onnx" to `formats`')
        return self


class NotifySpec(BaseModel):
    """A webhook called once when the job ends (succeeded, failed or cancelled); see docs/operations.md."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"url": "https://ci.example.com/hooks/distillery", "secret": "a-long-random-shared-secret"}]})

    url: str = Field(max_length=2000, description="http(s) URL the job record is POSTed to; its host must be on "
                     "the operator's webhook allow-list (docs/operations.md) or the delivery is refused")
    secret: str = Field(min_length=16, max_length=256, description="key of the HMAC-SHA256 signature in the "
                        "X-Distillery-Signature header; never shown again in job records")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if u.username or u.password:
            raise ValueError("must not carry credentials; the secret signs each delivery instead")
        return v


Teachers = Annotated[TeacherSpec | list[TeacherSpec], Field(description="absent for method none")]


class JobSpec(BaseModel):
    """A distillation job. See docs/spec.md for every field."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "digits-teacher",
        "student": {"architecture": "mlp", "kwargs": {"hidden": [256, 256]}},
        "dataset": {"name": "digits"},
        "distillation": {"method": "none"},
        "training": {"epochs": 8, "batch_size": 64, "lr": 0.05, "seed": 0},
        "resources": {"device": "cpu"},
    }]})

    name: str | None = Field(None, max_length=200)
    teacher: Teachers | None = None
    student: StudentSpec
    dataset: DatasetSpec
    distillation: DistillationSpec = Field(default_factory=DistillationSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    baseline: bool = Field(False, description="also train the student without the teacher under the same "
                           "recipe and report the KD gain")
    export: ExportSpec | None = Field(None, description="deployable students (ONNX, .pt2, int8) and a latency "
                                      "comparison, made after training; off when absent")
    notify: NotifySpec | None = Field(None, description="a webhook called when the job ends")

    @property
    def teachers(self) -> list[TeacherSpec]:
        if self.teacher is None:
            return []
        return self.teacher if isinstance(self.teacher, list) else [self.teacher]

    @model_validator(mode="after")
    def _teacher_matches_method(self) -> JobSpec:
        meta = METHODS.get(self.distillation.method).meta
        if meta.get("needs_teacher", True) and not self.teachers:
            raise ValueError(f"method {self.distillation.method!r} needs a `teacher`")
        if not meta.get("needs_teacher", True) and self.teachers:
            raise ValueError(f"method {self.distillation.method!r} trains on labels alone; remove `teacher`")
        if self.baseline and self.distillation.method == "none":
            raise ValueError("`baseline: true` compares against a run on labels alone; a job with method "
                             "'none' is already that run")
        if len(self.teachers) > 1 and not meta.get("multi_teacher", False):
            raise ValueError(f"method {self.distillation.method!r} takes one teacher, not a list")
        return self


def semantic_errors(spec: JobSpec, num_classes: int, in_channels: int) -> list[tuple[tuple[str | int, ...], str]]:
    """Checks that need the dataset's facts: each model's kwargs against its class count and channels.
    Returns (loc, msg) pairs, loc relative to the JobSpec (e.g. ("student", "kwargs", "hidden", 0))."""
    from kdcore.models import InvalidModelKwargsError, validate_model_kwargs

    models: list[tuple[tuple[str | int, ...], str, dict[str, Any]]] = [
        (("student", "kwargs"), spec.student.architecture, spec.student.kwargs)]
    for i, t in enumerate(spec.teachers):
        if t.architecture is not None:
            base: tuple[str | int, ...] = ("teacher", i) if isinstance(spec.teacher, list) else ("teacher",)
            models.append(((*base, "kwargs"), t.architecture, t.kwargs))
    errors: list[tuple[tuple[str | int, ...], str]] = []
    for loc, arch, kwargs in models:
        try:
            validate_model_kwargs(arch, kwargs, num_classes=num_classes, in_channels=in_channels)
        except InvalidModelKwargsError as e:
            errors += [((*loc, *err["loc"]), err["msg"]) for err in e.errors]
        except ValueError as e:
            errors.append((loc, str(e)))
    return errors


def teacher_input_errors(t: TeacherSpec, takes: list[int | None] | None, dataset: str,
                         gives: tuple[int, int, int]) -> list[tuple[tuple[str | int, ...], str]]:
    """What stops this teacher from taking the dataset's input through its `input` adapter, from what the
    teacher takes (per-sample [C, H, W] as its upload recorded it, None where not fixed) and what the
    dataset gives. (loc, msg) pairs, loc relative to the teacher (e.g. ("input", "size")); each message
    says what the teacher takes, what the dataset gives and what to set."""
    adapter = t.input or TeacherInput()
    c_a = adapter.channels or gives[0]
    size_a = tuple(adapter.size) if adapter.size else gives[1:]
    shown = f"dataset {dataset} gives {gives}"
    if (c_a, *size_a) != gives:
        shown += f", which teacher.input makes {(c_a, *size_a)}"
    errors: list[tuple[tuple[str | int, ...], str]] = []
    c_t = takes[0] if takes and len(takes) == 3 else None
    if takes and len(takes) == 3:
        wanted = tuple(takes)
        if c_t is not None and c_t != c_a:
            fix = (f"set teacher.input.channels: {c_t}" if c_t in (1, 3) else
                   "teacher.input.channels converts only between 1 and 3 channels, so it cannot feed this teacher")
            errors.append((("input", "channels"), f"teacher takes input {wanted} but {shown}; {fix}"))
        h_t, w_t = takes[1], takes[2]
        if (h_t is not None and h_t != size_a[0]) or (w_t is not None and w_t != size_a[1]):
            want = [h_t if h_t is not None else size_a[0], w_t if w_t is not None else size_a[1]]
            errors.append((("input", "size"), f"teacher takes input {wanted} but {shown}; set teacher.input.size: "
                           f"{want}"))
    channels = c_t or c_a
    for name in ("mean", "std"):
        values = getattr(adapter, name)
        if values is not None and len(values) not in (1, channels):
            errors.append((("input", name), f"has {len(values)} values but the teacher takes {channels} "
                           f"channel{'s' if channels > 1 else ''}; give one value per channel, or one for all"))
    return errors
