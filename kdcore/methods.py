"""Distillation methods behind one interface, in the style of mdistiller's `Distiller`.

A method owns the student, its frozen teachers and any modules of its own (FitNets regressors, the DML
peer) and answers `forward_train(x, y, epoch, t_out)` with the student's logits and a dict of named,
already weighted loss terms; the training loop sums them. `epoch` is fractional (epoch index plus the
share of its steps done) so that schedules and warm-ups move smoothly.

Teachers are run by `teacher_forward`, which returns every teacher's logits and the features the
method needs; the loop may pass a cached `TeacherOutput` instead (the teacher's input does not change
between epochs without augmentation), so a method never assumes its teachers ran in this step.
Before the optimizer is built the loop calls `setup(x)` once with a sample batch: methods that compare
features find their layers and size their regressors there, from a dry run.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from kdcore.features import as_vector, capture, default_feature_layer, resolve_layer
from kdcore.losses import dkd_terms, soft_kl_logp, teacher_log_probs
from kdcore.models import MODELS
from kdcore.registry import Registry, UnknownNameError
from kdcore.schedules import ScheduleSpec

METHODS: Registry[Callable[..., Distiller]] = Registry("method")
Terms = dict[str, torch.Tensor]


def register_method(name: str, *, description: str, paper: str = "", needs_teacher: bool = True,
                    logits_only: bool = True, multi_teacher: bool = False,
                    params: type[BaseModel] | None = None) -> Callable[[type[Distiller]], type[Distiller]]:
    """`logits_only` methods work with any teacher, ONNX ones included (they need no features);
    `multi_teacher` ones accept a list of teachers, whose soft targets they average."""
    return METHODS.register(name, description=description, paper=paper, needs_teacher=needs_teacher,
                            logits_only=logits_only, multi_teacher=multi_teacher, params=params)


def _eval(module: nn.Module) -> None:
    # torch.export programs are already traced in eval mode and some refuse .eval(); that is fine.
    try:
        module.eval()
    except (NotImplementedError, RuntimeError):
        pass


@dataclass
class TeacherOutput:
    """What the teachers said about one batch: logits [K, B, C] (K teachers) and the first teacher's
    features by layer path. Cacheable: it depends on the input only, never on the epoch."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def index(self, idx: torch.Tensor) -> TeacherOutput:
        return TeacherOutput(self.logits[:, idx], {k: v[idx] for k, v in self.features.items()})


class Distiller(nn.Module):
    """Student plus frozen teachers. Only the student's (and a method's own) parameters train."""

    def __init__(self, student: nn.Module, teachers: list[nn.Module], temperature: float, alpha: float,
                 params: dict[str, Any], *, teacher_weights: list[float] | None = None,
                 schedule: ScheduleSpec | None = None, epochs: int = 1):
        super().__init__()
        self.student = student
        # A plain list keeps teachers out of .parameters(), .train() and state_dict(): they are never
        # optimized or checkpointed with the student.
        self.teachers = list(teachers)
        for t in self.teachers:
            _eval(t)
            for p in t.parameters():
                p.requires_grad_(False)
        self.temperature, self.alpha, self.params = temperature, alpha, params
        w = torch.tensor(teacher_weights if teacher_weights else [1.0] * max(1, len(self.teachers)))
        self.register_buffer("teacher_weights", w / w.sum(), persistent=False)
        self.schedule = schedule or ScheduleSpec()
        self.epochs = epochs

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        for t in self.teachers:  # teachers stay in eval mode (batch norm statistics, dropout)
            _eval(t)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ---- what a method needs from its teachers ----------------------------------------------------
    def teacher_layers(self) -> list[str]:
        """Layer paths of the first teacher whose outputs this method compares (after setup)."""
        return []

    def setup(self, x: torch.Tensor) -> None:
        """Called once with a sample batch before the optimizer is built."""

    def extra_students(self) -> dict[str, nn.Module]:
        """Further trained models to save and evaluate beside the student (the DML peer)."""
        return {}

    @torch.no_grad()
    def teacher_forward(self, x: torch.Tensor) -> TeacherOutput:
        layers = self.teacher_layers()
        if not layers:
            return TeacherOutput(self.teacher_forward_logits(x))
        with capture(self.teachers[0], layers, "the teacher") as got:
            first = self.teachers[0](x).float()
        rest = [t(x).float() for t in self.teachers[1:]]
        return TeacherOutput(torch.stack([first, *rest]), dict(got))

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teachers' joint prediction: one teacher's logits, or the log of the ensemble's weighted
        mean probabilities (valid logits for top-k and cross-entropy)."""
        z = self.teacher_forward_logits(x)
        return z[0] if z.shape[0] == 1 else teacher_log_probs(z, 1.0, self.teacher_weights)

    @torch.no_grad()
    def teacher_forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([t(x).float() for t in self.teachers])

    # ---- schedules ----------------------------------------------------------------------------------
    def coefficients(self, epoch: float) -> tuple[float, float]:
        """(T, weight of the soft term) at this fractional epoch: schedules and warm-up applied."""
        s = self.schedule
        t = s.temperature_at(self.temperature, epoch, self.epochs)
        a = s.alpha_at(self.alpha, epoch, self.epochs)
        return t, a

    def soft_scale(self, epoch: float) -> float:
        return self.schedule.warmup_at(epoch)

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: float,
                      t_out: TeacherOutput | None = None) -> tuple[torch.Tensor, Terms]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    # ---- shared pieces ----------------------------------------------------------------------------------
    def kd_terms(self, z_s: torch.Tensor, y: torch.Tensor, epoch: float, t_out: TeacherOutput,
                 soft: bool = True) -> Terms:
        """(1 - alpha) * CE + alpha * warm-up * T^2 * KL(p_t || p_s); with soft=False plain CE."""
        if not soft:
            return {"ce": F.cross_entropy(z_s.float(), y)}
        t, a = self.coefficients(epoch)
        log_p_t = teacher_log_probs(t_out.logits, t, self.teacher_weights)
        return {"soft": a * self.soft_scale(epoch) * soft_kl_logp(z_s, log_p_t, t),
                "hard": (1.0 - a) * F.cross_entropy(z_s.float(), y)}


@register_method("none", description="Plain supervised training on the labels (no teacher): makes a teacher "
                 "or a baseline with the service itself.", needs_teacher=False)
class Supervised(Distiller):
    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: float,
                      t_out: TeacherOutput | None = None) -> tuple[torch.Tensor, Terms]:
        logits = self.student(x)
        return logits, {"ce": F.cross_entropy(logits.float(), y)}


@register_method("kd", description="Soft targets with temperature: alpha * T^2 * KL(p_t || p_s) + "
                 "(1 - alpha) * CE(z_s, y). With several teachers p_t is their weighted mean probability.",
                 paper="Hinton, Vinyals, Dean 2015, Distilling the Knowledge in a Neural Network, arXiv:1503.02531",
                 multi_teacher=True)
class KD(Distiller):
    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: float,
                      t_out: TeacherOutput | None = None) -> tuple[torch.Tensor, Terms]:
        t_out = t_out or self.teacher_forward(x)
        z_s = self.student(x)
        return z_s, self.kd_terms(z_s, y, epoch, t_out)


class DKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(1.0, ge=0, le=100, description="weight of TCKD (target-class KD)")
    # The paper uses 8 on CIFAR-100 and 0.5 on ImageNet, with CE at weight 1. Here the soft side is
    # weighted by distillation.alpha (0.9 by default) against 0.1 for CE; at beta 8 that sent an MNIST
    # student to chance (benchmarks/methods.py), at 2 it trains. See docs/methods.md.
    beta: float = Field(2.0, ge=0, le=100, description="weight of NCKD (non-target-class KD); the paper uses 8 "
                        "on CIFAR-100 with CE at weight 1, i.e. distillation.alpha 0.5")
    warmup_epochs: float = Field(1.0, ge=0, le=1000, description="the DKD term ramps linearly from 0 over "
                                 "this many epochs (the paper uses 20 of 240)")


@register_method("dkd", description="Decoupled KD: (1 - alpha) * CE + alpha * ramp * (params.alpha * TCKD + "
                 "params.beta * NCKD); the target-class and non-target-class parts of KD weighed apart.",
                 paper="Zhao, Cui, Song, Qiu, Liang 2022, Decoupled Knowledge Distillation, CVPR, arXiv:2203.08679",
                 multi_teacher=True, params=DKDParams)
class DKD(Distiller):
    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: float,
                      t_out: TeacherOutput | None = None) -> tuple[torch.Tensor, Terms]:
        t_out = t_out or self.teacher_forward(x)
        z_s = self.student(x)
        t, a = self.coefficients(epoch)
        p = self.params
        ramp = self.soft_scale(epoch) * (min(1.0, epoch / p["warmup_epochs"]) if p["warmup_epochs"] > 0 else 1.0)
        tckd, nckd = dkd_terms(z_s, teacher_log_probs(t_out.logits, t, self.teacher_weights), y, t)
        return z_s, {"tckd": a * ramp * p["alpha"] * tckd, "nckd": a * ramp * p["beta"] * nckd,
                     "hard": (1.0 - a) * F.cross_entropy(z_s.float(), y)}


class LayerPair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher: str = Field(description="module path in the teacher, e.g. layer3 (see named_modules())")
    student: str = Field(description="module path in the student, e.g. layer3 or body")


class _FeatureDistiller(Distiller):
    """Shared by the feature methods: resolves layer pairs (auto or named) in `setup`."""

    pairs: list[tuple[str, str]]

    def teacher_layers(self) -> list[str]:
        return [t for t, _ in self.pairs]

    def _resolve_pairs(self, x: torch.Tensor) -> list[tuple[str, str]]:
        named = self.params.get("pairs") or []
        if named:
            for p in named:
                resolve_layer(self.teachers[0], p["teacher"], "the teacher")
                resolve_layer(self.student, p["student"], "the student")
            return [(p["teacher"], p["student"]) for p in named]
        return [(default_feature_layer(self.teachers[0], x, "the teacher"),
                 default_feature_layer(self.student, x, "the student"))]

    def _dry_run(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        t_feats = self.teacher_forward(x).features
        was = self.student.training
        self.student.eval()
        with torch.no_grad(), capture(self.student, [s for _, s in self.pairs], "the student") as s_feats:
            self.student(x)
        self.student.train(was)
        return t_feats, dict(s_feats)

    def student_features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with capture(self.student, [s for _, s in self.pairs], "the student") as got:
            z_s = self.student(x)
        return z_s, dict(got)


def _match_spatial(f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(f.shape[-2:]) == size:
        return f
    if f.shape[-2] >= size[0] and f.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(f, size)
    return F.interpolate(f, size=size, mode="bilinear", align_corners=False)


class Regressor(nn.Module):
    """Maps a student feature onto the teacher feature's shape: a 1x1 conv (+BN) between feature maps,
    resized to the teacher's spatial size; otherwise a linear map between pooled feature vectors."""

    def __init__(self, s_shape: torch.Size, t_shape: torch.Size):
        super().__init__()
        self.spatial = len(s_shape) == 4 and len(t_shape) == 4
        if self.spatial:
            self.size = (int(t_shape[2]), int(t_shape[3]))
            self.proj: nn.Module = nn.Sequential(nn.Conv2d(s_shape[1], t_shape[1], 1, bias=False),
                                                 nn.BatchNorm2d(t_shape[1]))
        else:
            s_dim = s_shape[1] if len(s_shape) in (2, 4) else s_shape[-1]
            t_dim = t_shape[1] if len(t_shape) in (2, 4) else t_shape[-1]
            self.proj = nn.Linear(int(s_dim), int(t_dim))

    def forward(self, f_s: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            return _match_spatial(self.proj(f_s), self.size)
        return self.proj(as_vector(f_s))

    def target(self, f_t: torch.Tensor) -> torch.Tensor:
        return f_t if self.spatial else as_vector(f_t)


class _FeatureParams(BaseModel):
    """What every feature method takes: which layers to compare, and whether the logit term joins in."""

    model_config = ConfigDict(extra="forbid")

    pairs: list[LayerPair] = Field(default_factory=list, description="teacher/student layer pairs; empty: the "
                                   "last feature block of each, paired automatically")
    kd: bool = Field(True, description="also use the logit term (alpha, T); false: CE + the feature term only")


class FitNetsParams(_FeatureParams):
    hint_weight: float = Field(1.0, ge=0, le=1e4, description="weight of the hint (MSE) term")


@register_method("fitnets", description="Hints: MSE between a teacher layer and a learned regressor (1x1 conv or "
                 "linear) of a student layer, weighted by params.hint_weight, jointly with the KD term.",
                 paper="Romero et al. 2015, FitNets: Hints for Thin Deep Nets, ICLR, arXiv:1412.6550",
                 logits_only=False, params=FitNetsParams)
class FitNets(_FeatureDistiller):
    def setup(self, x: torch.Tensor) -> None:
        self.pairs = self._resolve_pairs(x)
        t_feats, s_feats = self._dry_run(x)
        self.regressors = nn.ModuleList(Regressor(s_feats[s].shape, t_feats[t].shape).to(x.device)
                                        for t, s in self.pairs)

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: float,
                      t_out: TeacherOutput | None = None) -> tuple[torch.Tensor, Terms]:
        t_out = t_out or self.teacher_forward(x)
        z_s, s_feats = self.student_features(x)
        hint = sum(F.mse_loss(reg(s_feats[s]).float(), reg.target(t_out.features[t]).float())
                   for reg, (t, s) in zip(self.regressors, self.pairs, strict=True))
        terms = self.kd_terms(z_s, y, epoch, t_out, soft=self.params["kd"])
        terms["hint"] = self.params["hint_weight"] * self.soft_scale(epoch) * hint
        return z_s, terms


def attention_map(f: torch.Tensor, p: float = 2.0, size: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Zagoruyko & Komodakis' spatial attention: mean over channels of |f|^p, flattened, L2-normalized.

    With a (H, W) size, feature maps [B, C, H, W] are resized to it. With an int size the map is over
    units instead, so that an MLP layer can be compared with a conv layer: a feature map gives one value
    per channel (mean of |f|^p over positions), token features [B, T, D] one per token, flat features
    [B, D] one per unit; the map is pooled to `size` entries so that two widths compare.
    """
    f = f.float()
    if f.ndim == 4 and not isinstance(size, int):
        a = f.abs().pow(p).mean(1, keepdim=True)
        if size is not None:
            a = _match_spatial(a, size)
        return F.normalize(a.flatten(1), dim=1)
    if f.ndim == 4:
        a = f.abs().pow(p).mean((2, 3))
    else:
        a = f.abs().pow(p).mean(2) if f.ndim == 3 else f.abs().pow(p).flatten(1)
    if size is not None and a.shape[1] != size:
        a = F.adaptive_avg_pool1d(a.unsqueeze(1), size).squeeze(1)
    return F.normalize(a, dim=1)


def _unit_count(f: torch.Tensor) -> int:
    return int(f.shape[1])  # channels of a map, tokens of a sequence, units of a vector


class ATParams(_FeatureParams):
    beta: float = Field(1000.0, ge=0, le=1e6, description="weight of the attention term (the paper's beta)")
    p: float = Field(2.0, gt=0, le=8, description="exponent of the attention map, |f|^p")


@register_method("at", description="Attention transfer: beta * mean squared difference of the L2-normalized "
                 "attention maps (channel mean of |f|^p) of named layer pairs, jointly with the KD term.",
                 paper="Zagoruyko, Komodakis 2017, Paying More Attention to Attention, ICLR, arXiv:1612.03928",
                 logits_only=False, params=ATParams)
class AT(_FeatureDistiller):
    def setup(self, x: torch.Tensor) -> None:
        self.pairs = self._resolve_pairs(x)
        t_feats, s_feats = self._dry_run(x)
        self.sizes: list[Any] = []
        for t, s in self.pairs:
            ft, fs = t_feats[t], s_feats[s]
            if ft.ndim == 4 and fs.ndim == 4:
                self.sizes.append((min(ft.shape[2], fs.shape[2]), min(ft.shape[3], fs.shape[3])))
            else:  # a feature map against a vector (conv teacher, MLP student): compare maps over units
                self.sizes.append(min(_unit_count(ft), _unit_count(fs)))

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: float,
                      t_out: TeacherOutput | None = None) -> tuple[torch.Tensor, Terms]:
        t_out = t_out or self.teacher_forward(x)
        z_s, s_feats = self.student_features(x)
        p = self.params["p"]
        at = sum((attention_map(s_feats[s], p, size) - attention_map(t_out.features[t], p, size)).pow(2).mean()
                 for size, (t, s) in zip(self.sizes, self.pairs, strict=True))
        terms = self.kd_terms(z_s, y, epoch, t_out, soft=self.params["kd"])
        terms["attention"] = self.params["beta"] * self.soft_scale(epoch) * at
        return z_s, terms


class DMLParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    peer_architecture: str | None = Field(None, description="registry name of the second student; default: "
                                          "the same as the student")
    peer_kwargs: dict[str, Any] | None = Field(None, description="its kwargs; default: the student's")

    @field_validator("peer_architecture")
    @classmethod
    def _known_architecture(cls, v: str | None) -> str | None:
        if v is not None and v not in MODELS:
            raise ValueError(str(UnknownNameError("architecture", v, MODELS.names())))
        return v


@register_method("dml", description="Deep mutual learning: two students, no fixed teacher; each learns from the "
                 "labels, (1 - alpha) * CE, and from the other's soft predictions, alpha * T^2 * KL. Both are "
                 "returned (student.safetensors, peer.safetensors).",
                 paper="Zhang, Xiang, Hospedales, Lu 2018, Deep Mutual Learning, CVPR, arXiv:1706.00384",
                 needs_teacher=False, params=DMLParams)
class DML(Distiller):
    def __init__(self, student: nn.Module, teachers: list[nn.Module], temperature: float, alpha: float,
                 params: dict[str, Any], *, peer: nn.Module | None = None, **kw: Any):
        super().__init__(student, [], temperature, alpha, params, **kw)
        if peer is None:
            raise ValueError("dml needs its peer model (built by the training loop from params)")
        self.peer = peer

    def extra_students(self) -> dict[str, nn.Module]:
        return {"peer": self.peer}

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: float,
                      t_out: TeacherOutput | None = None) -> tuple[torch.Tensor, Terms]:
        z1, z2 = self.student(x), self.peer(x)
        t, a = self.coefficients(epoch)
        w = a * self.soft_scale(epoch)
        # each network learns from the other's current predictions, held fixed for this step
        lp1 = teacher_log_probs(z1.detach(), t)
        lp2 = teacher_log_probs(z2.detach(), t)
        return z1, {"hard": (1.0 - a) * F.cross_entropy(z1.float(), y), "soft": w * soft_kl_logp(z1, lp2, t),
                    "peer_hard": (1.0 - a) * F.cross_entropy(z2.float(), y),
                    "peer_soft": w * soft_kl_logp(z2, lp1, t)}


def method_catalog() -> list[dict[str, Any]]:
    out = []
    for e in METHODS:
        params = e.meta.get("params")
        out.append({
            "name": e.name, "description": e.meta["description"], "paper": e.meta["paper"],
            "needs_teacher": e.meta["needs_teacher"], "logits_only": e.meta["logits_only"],
            "multi_teacher": e.meta["multi_teacher"],
            "params": params.model_json_schema() if params else {"type": "object", "properties": {}},
            "common": {"temperature": "T > 0, default 4", "alpha": "weight of the soft term in [0, 1], default 0.9",
                       "schedule": ScheduleSpec.model_json_schema()},
        })
    return out
