"""CLIP-KD's loss family as one module: any weighted combination of CRD, FD, MFD, GD, ICL and AFD
(docs/method.md §3), beside or instead of the MobileCLIP loss.

The teachers' embeddings arrive concatenated, ``[B, sum D_k]`` in ``teacher_dims`` order (the
reinforced shards' layout, or the teachers run online); every term is computed per teacher
and averaged over teachers, like MobileCLIP's targets. What the terms learn (projections into
each teacher's space, AFD's fusion layers, ICL's cross-model scale) lives here, so it trains
in the student's optimiser and is saved in its checkpoint; none of it is part of the student.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import KD_TERMS as TERMS
from training.losses.afd import FeatureFusion, afd_loss
from training.losses.crd import crd_loss
from training.losses.fd import fd_loss
from training.losses.gd import gd_loss
from training.losses.icl import icl_loss
from training.losses.mfd import mfd_loss
from training.losses.projection import TeacherProjections
from training.optim import clamp_logit_scale_, scale_multiplier

# Terms that compare student and teacher embeddings entry by entry, so need the teacher's size.
_PROJECTED = frozenset({"fd", "mfd", "gd", "icl"})
# ICL's cross-model scale starts where CLIP's does: 1 / 0.07.
_ICL_INIT_LOGIT_SCALE = math.log(1 / 0.07)


class ClipKDLoss(nn.Module):
    """``forward(...)`` -> ``{"loss_kd": sum_t w_t L_t, "loss_<t>": L_t}`` for the terms with w_t > 0."""

    def __init__(
        self,
        weights: Mapping[str, float],
        student_dim: int,
        teacher_dims: Sequence[int],
        teacher_scales: Sequence[float],
    ) -> None:
        super().__init__()
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ValueError(f"unknown CLIP-KD terms {unknown}; known: {list(TERMS)}")
        if any(w < 0 or not math.isfinite(w) for w in weights.values()):
            raise ValueError(f"CLIP-KD weights must be finite and >= 0, got {dict(weights)}")
        if len(teacher_dims) != len(teacher_scales) or not teacher_dims:
            raise ValueError(f"need one scale per teacher: dims {list(teacher_dims)}, scales {list(teacher_scales)}")
        self.weights = {t: float(weights[t]) for t in TERMS if weights.get(t, 0.0) > 0}
        self.teacher_dims = tuple(int(d) for d in teacher_dims)
        self.teacher_scales = tuple(float(s) for s in teacher_scales)
        self.projections = (
            TeacherProjections(student_dim, self.teacher_dims) if _PROJECTED & set(self.weights) else None
        )
        self.icl_logit_scale = nn.Parameter(torch.tensor(_ICL_INIT_LOGIT_SCALE)) if "icl" in self.weights else None
        self.fusion = (
            nn.ModuleList(FeatureFusion(student_dim, d) for d in self.teacher_dims) if "afd" in self.weights else None
        )

    @property
    def active(self) -> bool:
        return bool(self.weights)

    @property
    def needs_masked_view(self) -> bool:
        return "mfd" in self.weights

    def split_teachers(self, t_emb: torch.Tensor) -> list[torch.Tensor]:
        """[B, sum D_k] -> K unit-norm [B, D_k] parts (re-normalised: bf16 storage drifts)."""
        if t_emb.ndim != 2 or t_emb.shape[1] != sum(self.teacher_dims):
            raise ValueError(
                f"teacher embeddings {tuple(t_emb.shape)} do not match the teachers' widths {list(self.teacher_dims)}"
            )
        return [F.normalize(part.float(), dim=1) for part in t_emb.split(list(self.teacher_dims), dim=1)]

    def forward(
        self,
        s_img: torch.Tensor,
        s_txt: torch.Tensor,
        s_scale: torch.Tensor | float,
        t_img: torch.Tensor,
        t_txt: torch.Tensor,
        s_img_masked: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """s_* [B, D_s] student unit embeddings; t_* [B, sum D_k] the teachers' of the same
        view and captions; ``s_img_masked`` [B, D_s] the student's embedding of the masked
        view (required when MFD is on)."""
        if not self.active:
            raise ValueError("ClipKDLoss has no term with a weight > 0")
        if self.needs_masked_view and s_img_masked is None:
            raise ValueError("MFD needs the student's embedding of the masked view (s_img_masked)")
        per_term: dict[str, list[torch.Tensor]] = {t: [] for t in self.weights}
        for k, (g_img, g_txt) in enumerate(zip(self.split_teachers(t_img), self.split_teachers(t_txt), strict=True)):
            tau = self.teacher_scales[k]
            if self.projections is not None:
                f_img, f_txt = self.projections(s_img, s_txt, k)  # [B, D_k] each
            if "crd" in per_term:
                per_term["crd"].append(crd_loss(s_img, s_txt, s_scale, g_img, g_txt, tau))
            if "fd" in per_term:
                per_term["fd"].append(fd_loss(f_img, f_txt, g_img, g_txt))
            if "mfd" in per_term:
                assert self.projections is not None and s_img_masked is not None
                per_term["mfd"].append(mfd_loss(self.projections.project_image(s_img_masked, k), g_img))
            if "gd" in per_term:
                per_term["gd"].append(gd_loss(f_img, f_txt, s_scale, g_img, g_txt, tau))
            if "icl" in per_term:
                assert self.icl_logit_scale is not None
                per_term["icl"].append(icl_loss(f_img, f_txt, g_img, g_txt, self.icl_scale()))
            if "afd" in per_term:
                assert self.fusion is not None
                per_term["afd"].append(afd_loss(self.fusion[k], s_img, s_txt, g_img, g_txt, s_scale))
        out = {f"loss_{t}": torch.stack(values).mean() for t, values in per_term.items()}
        out["loss_kd"] = sum(self.weights[t] * out[f"loss_{t}"] for t in self.weights)
        return out

    def icl_scale(self) -> torch.Tensor:
        """ICL's cross-model scale, capped like every learned CLIP temperature."""
        assert self.icl_logit_scale is not None
        return scale_multiplier(self.icl_logit_scale)

    def clamp_scales_(self) -> None:
        """After an optimiser step, as for the student's own temperature."""
        if self.icl_logit_scale is not None:
            clamp_logit_scale_(self.icl_logit_scale)
