"""MFD, masked feature distillation (CLIP-KD; docs/method.md §3).

The student's image tower sees a masked view (``StudentClip.encode_image_masked``: MAE-style
token dropping for a ViT, masked pixel patches for a convolutional tower) and must reproduce
the teacher's features of the full view:

    L_MFD = MSE(f_img(masked), g_img(full))

CLIP-KD's public code runs the masked pass and then overwrites its output with the unmasked
one, so its MFD is plain FD; here the masked embedding is the one the loss sees, and the
test shows its gradient differs from FD's.
"""

from __future__ import annotations

import torch

from training.losses.fd import feature_mse


def mfd_loss(f_img_masked: torch.Tensor, g_img: torch.Tensor) -> torch.Tensor:
    """f_img_masked [B, D_t]: the student's (projected) embedding of the masked view."""
    return feature_mse(f_img_masked, g_img)
