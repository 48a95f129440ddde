"""`at`: attention transfer (Zagoruyko & Komodakis 2017), the distance between normalized attention maps."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from kdcore.methods.base import TeacherOutput, Terms, register_method
from kdcore.methods.feature_base import FeatureDistiller, FeatureParams, match_spatial


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
            a = match_spatial(a, size)
        return F.normalize(a.flatten(1), dim=1)
    if f.ndim == 4:
        a = f.abs().pow(p).mean((2, 3))
    else:
        a = f.abs().pow(p).mean(2) if f.ndim == 3 else f.abs().pow(p).flatten(1)
    if size is not None and a.shape[1] != size:
        a = F.adaptive_avg_pool1d(a.unsqueeze(1), size).squeeze(1)
    return F.normalize(a, dim=1)


def attention_loss(s_feats: dict[str, torch.Tensor], t_feats: dict[str, torch.Tensor],
                   pairs: list[tuple[str, str]], sizes: list[Any], p: float) -> torch.Tensor:
    """Sum over layer pairs of the mean squared difference of the two attention maps at a common size."""
    return sum((attention_map(s_feats[s], p, size) - attention_map(t_feats[t], p, size)).pow(2).mean()
               for size, (t, s) in zip(sizes, pairs, strict=True))


def _unit_count(f: torch.Tensor) -> int:
    return int(f.shape[1])  # channels of a map, tokens of a sequence, units of a vector


class ATParams(FeatureParams):
    beta: float = Field(1000.0, ge=0, le=1e6, description="weight of the attention term (the paper's beta)")
    p: float = Field(2.0, gt=0, le=8, description="exponent of the attention map, |f|^p")


@register_method("at", description="Attention transfer: beta * mean squared difference of the L2-normalized "
                 "attention maps (channel mean of |f|^p) of named layer pairs, jointly with the KD term.",
                 paper="Zagoruyko, Komodakis 2017, Paying More Attention to Attention, ICLR, arXiv:1612.03928",
                 logits_only=False, params=ATParams)
class AT(FeatureDistiller):
    def setup(self, x: torch.Tensor) -> None:
        self.pairs = self.resolve_pairs(x)
        t_feats, s_feats = self.dry_run(x)
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
        at = attention_loss(s_feats, t_out.features, self.pairs, self.sizes, self.params["p"])
        terms = self.logit_terms(z_s, y, epoch, t_out)
        terms["attention"] = self.params["beta"] * self.soft_scale(epoch) * at
        return z_s, terms
