"""Hiding part of an image from an encoder, for masked feature distillation (CLIP-KD's MFD).

A ViT drops the hidden tokens before its transformer (MAE's way, open_clip's
``PatchDropout``); a convolutional tower cannot drop positions, so the hidden patches are
filled with the pixel mean, which normalises to zero (what SparK and ConvNeXt V2 feed a CNN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# A conv tower's image is masked on this many x this many patches (MAE's 14 x 14 at 224 px is
# 16 px patches; the embedded students see 64 px, where 8 x 8 gives 8 px patches).
PIXEL_MASK_GRID = 8


def hidden_count(ratio: float, patches: int) -> int:
    """How many of ``patches`` to hide: at least one, and at least one left visible."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    return min(max(1, round(ratio * patches)), patches - 1)


def mask_pixel_patches(
    pixels: torch.Tensor,
    ratio: float,
    fill: torch.Tensor,
    grid: int = PIXEL_MASK_GRID,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[B, 3, H, W] -> the same with ``ratio`` of a grid x grid patch layout set to ``fill``
    ([1, 3, 1, 1]); each image hides its own uniformly random subset of patches."""
    b, _, h, w = pixels.shape
    n = grid * grid
    scores = torch.rand(b, n, generator=generator, device=pixels.device if generator is None else "cpu")
    hidden = scores.argsort(dim=1)[:, : hidden_count(ratio, n)]  # [B, k] patch indices
    hide = torch.zeros(b, n, dtype=torch.bool).scatter_(1, hidden.cpu(), True).to(pixels.device)
    mask = F.interpolate(hide.view(b, 1, grid, grid).float(), size=(h, w), mode="nearest").bool()  # [B, 1, H, W]
    return torch.where(mask, fill.to(pixels.dtype).expand_as(pixels), pixels)
