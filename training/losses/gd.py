"""GD, gradient distillation (CLIP-KD; docs/method.md §3).

The student's analytic gradients of the contrastive loss with respect to its embeddings are
matched to the teacher's. For ``L_CLIP = 1/2 (CE_rows(Z) + CE_cols(Z))``, ``Z = s img txt^T``:

    dL/dZ   = 1/(2B) ((softmax_rows(Z) - I) + (softmax_rows(Z^T) - I)^T)
    dL/dimg = s dL/dZ txt,   dL/dtxt = s dL/dZ^T img
    L_GD = MSE(dL/df_img, dL/dg_img) + MSE(dL/df_txt, dL/dg_txt)

The gradients are closed-form functions of the embeddings, so the student's stay
differentiable (no double backward). They are O(s / B^2) per entry, hence the public code's
weight of 1e8; clipforge's weight is whatever the config says.
"""

from __future__ import annotations

import torch

from training.losses.fd import feature_mse


def contrastive_grads(
    img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dimg, dL/dtxt) of the symmetric CLIP loss; img, txt [B, D] -> [B, D] each."""
    img, txt = img.float(), txt.float()
    z = scale * img @ txt.T  # [B, B]
    eye = torch.eye(z.shape[0], device=z.device)
    dz = ((z.softmax(dim=1) - eye) + (z.T.softmax(dim=1) - eye).T) / (2 * z.shape[0])
    return scale * dz @ txt, scale * dz.T @ img


def gd_loss(
    f_img: torch.Tensor,
    f_txt: torch.Tensor,
    s_scale: torch.Tensor | float,
    g_img: torch.Tensor,
    g_txt: torch.Tensor,
    t_scale: float,
) -> torch.Tensor:
    """f_* [B, D_t] student embeddings in the teacher's space, g_* [B, D_t] the teacher's."""
    s_dimg, s_dtxt = contrastive_grads(f_img, f_txt, s_scale)
    with torch.no_grad():
        t_dimg, t_dtxt = contrastive_grads(g_img, g_txt, float(t_scale))
    return feature_mse(s_dimg, t_dimg) + feature_mse(s_dtxt, t_dtxt)
