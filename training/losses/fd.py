"""FD, feature distillation (CLIP-KD; docs/method.md §3; paper weight 2000).

    L_FD = MSE(f_img, g_img) + MSE(f_txt, g_txt)

with ``f`` the student's unit embeddings mapped into the teacher's space
(:class:`~training.losses.projection.TeacherProjections`) and ``g`` the teacher's. Mean
reduction over batch and features, hence the large paper weight: for unit vectors of width D
the MSE is (2 - 2 cos) / D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def feature_mse(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Mean squared error between student [B, D] and (detached) teacher [B, D] features."""
    if f.shape != g.shape:
        raise ValueError(
            f"feature distillation needs equal shapes (project first): {tuple(f.shape)} vs {tuple(g.shape)}"
        )
    return F.mse_loss(f.float(), g.detach().float())


def fd_loss(f_img: torch.Tensor, f_txt: torch.Tensor, g_img: torch.Tensor, g_txt: torch.Tensor) -> torch.Tensor:
    return feature_mse(f_img, g_img) + feature_mse(f_txt, g_txt)
