"""CRD, contrastive relational distillation (CLIP-KD; docs/method.md §3; paper weight 1).

Each model softmaxes its own image-text similarity matrix with its own logit scale, and the
student's is pulled to the teacher's by KL, in both directions:

    P = softmax(s_T g_img g_txt^T),  Q = softmax(s_S f_img f_txt^T)      (rows; [B, B])
    L_CRD = 1/2 (KL(P || Q) + KL(P' || Q'))      ' = the transposed matrices, text -> image

Unlike MobileCLIP's distillation term this is a true KL (the teacher's entropy subtracted),
so a student that matches its teacher scores 0. The student's embeddings need not share the
teacher's size: only the [B, B] matrices are compared.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _kl_rows(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(softmax(target) || softmax(logits)); [B, B] each."""
    return F.kl_div(logits.log_softmax(dim=1), target_logits.log_softmax(dim=1), reduction="batchmean", log_target=True)


def crd_loss(
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    s_scale: torch.Tensor | float,
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    t_scale: float,
) -> torch.Tensor:
    """s_* [B, D_s] student, t_* [B, D_t] teacher, unit vectors; scales multiply cosines."""
    student = s_scale * s_img.float() @ s_txt.float().T  # [B, B], row i: image i against every text
    with torch.no_grad():
        teacher = float(t_scale) * t_img.float() @ t_txt.float().T
    return 0.5 * (_kl_rows(teacher, student) + _kl_rows(teacher.T, student.T))
