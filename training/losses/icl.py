"""ICL, interactive contrastive learning (CLIP-KD; docs/method.md §3; paper weight 1).

Contrastive losses across the two models, diagonal targets: the student's images against the
teacher's texts, and the student's texts against the teacher's images, with a learnable scale
``s_X`` of their own (as in the public code):

    L_ICL = 1/2 (CE(s_X f_img g_txt^T) + CE(s_X f_txt g_img^T))

The teacher's embedding space is the anchor, so the student's must be mapped into it
(:class:`~training.losses.projection.TeacherProjections`) when the sizes differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def icl_loss(
    f_img: torch.Tensor,
    f_txt: torch.Tensor,
    g_img: torch.Tensor,
    g_txt: torch.Tensor,
    cross_scale: torch.Tensor | float,
) -> torch.Tensor:
    """f_* [B, D_t] student embeddings in the teacher's space, g_* [B, D_t] the teacher's."""
    g_img, g_txt = g_img.detach().float(), g_txt.detach().float()
    labels = torch.arange(f_img.shape[0], device=f_img.device)
    image_to_text = cross_scale * f_img.float() @ g_txt.T  # [B, B]: student image i vs teacher texts
    text_to_image = cross_scale * f_txt.float() @ g_img.T
    return 0.5 * (F.cross_entropy(image_to_text, labels) + F.cross_entropy(text_to_image, labels))
