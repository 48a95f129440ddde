"""What the feature methods (FitNets, AT) share: teacher/student layer pairs, their parameters, and the
regressor that maps a student feature onto a teacher feature's shape.

`FeatureDistiller.setup` resolves the layer pairs (named in params, or the last feature block of each
model, paired automatically) and `dry_run` takes both models' features on a sample batch, from which a
method sizes its own modules. The logit term beside the feature term is KD's (`kdcore.methods.kd`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from kdcore.features import as_vector, capture, default_feature_layer, resolve_layer
from kdcore.losses import cross_entropy
from kdcore.methods.base import Distiller, TeacherOutput, Terms
from kdcore.methods.kd import kd_terms


class LayerPair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher: str = Field(description="module path in the teacher, e.g. layer3 (see named_modules())")
    student: str = Field(description="module path in the student, e.g. layer3 or body")


class FeatureParams(BaseModel):
    """What every feature method takes: which layers to compare, and whether the logit term joins in."""

    model_config = ConfigDict(extra="forbid")

    pairs: list[LayerPair] = Field(default_factory=list, description="teacher/student layer pairs; empty: the "
                                   "last feature block of each, paired automatically")
    kd: bool = Field(True, description="also use the logit term (alpha, T); false: CE + the feature term only")


class FeatureDistiller(Distiller):
    """A method comparing teacher and student features at `pairs` (teacher path, student path)."""

    pairs: list[tuple[str, str]]

    def teacher_layers(self) -> list[str]:
        return [t for t, _ in self.pairs]

    def resolve_pairs(self, x: torch.Tensor) -> list[tuple[str, str]]:
        named = self.params.get("pairs") or []
        if named:
            for p in named:
                resolve_layer(self.teachers[0], p["teacher"], "the teacher")
                resolve_layer(self.student, p["student"], "the student")
            return [(p["teacher"], p["student"]) for p in named]
        return [(default_feature_layer(self.teachers[0], x, "the teacher"),
                 default_feature_layer(self.student, x, "the student"))]

    def dry_run(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(teacher features, student features) on x, the student in eval mode, without gradients."""
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

    def logit_terms(self, z_s: torch.Tensor, y: torch.Tensor, epoch: float, t_out: TeacherOutput) -> Terms:
        """KD's terms with params.kd (the default), else plain CE."""
        if not self.params["kd"]:
            return {"ce": cross_entropy(z_s, y)}
        return kd_terms(self, z_s, y, epoch, t_out)


def match_spatial(f: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A feature map resized to (H, W): average-pooled down, bilinearly interpolated up."""
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
            return match_spatial(self.proj(f_s), self.size)
        return self.proj(as_vector(f_s))

    def target(self, f_t: torch.Tensor) -> torch.Tensor:
        return f_t if self.spatial else as_vector(f_t)
