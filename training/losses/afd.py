"""AFD, augmented feature distillation (CLIP-KD; docs/method.md §3).

Student and teacher features are fused, ``h = W [f ; g]`` (concatenate, then a linear layer,
one per modality), and the contrastive loss is applied to the fused features:

    L_AFD = L_CLIP(h_img, h_txt)

The fused width is the student's, and ``W`` takes ``D_s + D_t`` inputs, so any pair of sizes
works (the public code assumes equal sizes and breaks otherwise).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.losses.mobileclip import clip_loss


class FeatureFusion(nn.Module):
    """``[B, D_s] + [B, D_t] -> [B, D_s]`` unit vectors, one linear layer per modality."""

    def __init__(self, student_dim: int, teacher_dim: int) -> None:
        super().__init__()
        self.image = nn.Linear(student_dim + teacher_dim, student_dim, bias=False)
        self.text = nn.Linear(student_dim + teacher_dim, student_dim, bias=False)

    def forward(
        self, s_img: torch.Tensor, s_txt: torch.Tensor, g_img: torch.Tensor, g_txt: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h_img = self.image(torch.cat([s_img.float(), g_img.detach().float()], dim=1))
        h_txt = self.text(torch.cat([s_txt.float(), g_txt.detach().float()], dim=1))
        return F.normalize(h_img, dim=-1), F.normalize(h_txt, dim=-1)


def afd_loss(
    fusion: FeatureFusion,
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    g_img: torch.Tensor,
    g_txt: torch.Tensor,
    scale: torch.Tensor | float,
) -> torch.Tensor:
    """s_* [B, D_s] student, g_* [B, D_t] teacher embeddings; ``scale`` the student's."""
    h_img, h_txt = fusion(s_img, s_txt, g_img, g_txt)
    return clip_loss(h_img, h_txt, scale)
