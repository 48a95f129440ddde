"""`fitnets`: hints (Romero et al. 2015), the MSE between a teacher layer and a regressed student layer."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdcore.methods.base import TeacherOutput, Terms, register_method
from kdcore.methods.feature_base import FeatureDistiller, FeatureParams, Regressor


def hint_loss(regressors: nn.ModuleList, pairs: list[tuple[str, str]], s_feats: dict[str, torch.Tensor],
              t_feats: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over layer pairs of MSE(regressor(student feature), teacher feature), in float32."""
    return sum(F.mse_loss(reg(s_feats[s]).float(), reg.target(t_feats[t]).float())
               for reg, (t, s) in zip(regressors, pairs, strict=True))


class FitNetsParams(FeatureParams):
    hint_weight: float = Field(1.0, ge=0, le=1e4, description="weight of the hint (MSE) term")


@register_method("fitnets", description="Hints: MSE between a teacher layer and a learned regressor (1x1 conv or "
                 "linear) of a student layer, weighted by params.hint_weight, jointly with the KD term.",
                 paper="Romero et al. 2015, FitNets: Hints for Thin Deep Nets, ICLR, arXiv:1412.6550",
                 logits_only=False, params=FitNetsParams)
class FitNets(FeatureDistiller):
    def setup(self, x: torch.Tensor) -> None:
        self.pairs = self.resolve_pairs(x)
        t_feats, s_feats = self.dry_run(x)
        self.regressors = nn.ModuleList(Regressor(s_feats[s].shape, t_feats[t].shape).to(x.device)
                                        for t, s in self.pairs)

    def forward_train(self, x: torch.Tensor, y: torch.Tensor, epoch: float,
                      t_out: TeacherOutput | None = None) -> tuple[torch.Tensor, Terms]:
        t_out = t_out or self.teacher_forward(x)
        z_s, s_feats = self.student_features(x)
        hint = hint_loss(self.regressors, self.pairs, s_feats, t_out.features)
        terms = self.logit_terms(z_s, y, epoch, t_out)
        terms["hint"] = self.params["hint_weight"] * self.soft_scale(epoch) * hint
        return z_s, terms
