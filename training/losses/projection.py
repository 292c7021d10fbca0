"""Learnable maps from the student's embedding size to each teacher's (CLIP-KD, docs/method.md §3).

CLIP-KD compares student and teacher features directly, so a student narrower or wider than a
teacher needs a linear layer into the teacher's space first. Equal sizes need none: the
identity keeps the loss exactly CLIP-KD's. The maps are trained with the student (they are
parameters of :class:`~training.losses.clip_kd.ClipKDLoss`, so they join the optimiser and
the checkpoint) and thrown away after training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _map(student_dim: int, teacher_dim: int) -> nn.Module:
    if student_dim == teacher_dim:
        return nn.Identity()
    # No bias: a CLIP embedding is a direction, so an offset would only shift every sample.
    return nn.Linear(student_dim, teacher_dim, bias=False)


class TeacherProjections(nn.Module):
    """Per teacher k, one image and one text map ``[B, D_s] -> [B, D_k]``, re-normalised."""

    def __init__(self, student_dim: int, teacher_dims: Sequence[int]) -> None:
        super().__init__()
        if student_dim < 1 or not teacher_dims or any(d < 1 for d in teacher_dims):
            raise ValueError(f"need positive sizes: student {student_dim}, teachers {list(teacher_dims)}")
        self.student_dim = int(student_dim)
        self.teacher_dims = tuple(int(d) for d in teacher_dims)
        self.image = nn.ModuleList(_map(self.student_dim, d) for d in self.teacher_dims)
        self.text = nn.ModuleList(_map(self.student_dim, d) for d in self.teacher_dims)

    def forward(self, s_img: torch.Tensor, s_txt: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Student embeddings [B, D_s] each -> unit vectors in teacher k's space, [B, D_k] each."""
        return F.normalize(self.image[k](s_img), dim=-1), F.normalize(self.text[k](s_txt), dim=-1)

    def project_image(self, s_img: torch.Tensor, k: int) -> torch.Tensor:
        return F.normalize(self.image[k](s_img), dim=-1)
