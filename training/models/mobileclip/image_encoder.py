"""Image towers of the MobileCLIP family: a timm trunk plus the CLIP head.

The trunk is a timm model built with ``num_classes=0``, so it ends in its pooled features
[B, C]: for FastViT/MCi that is the final MobileOne conv (C = 2x the last stage width) then
global mean pooling; for the ViT-B/16 with conv stem (``vit_base_mci_224``) it is the class
token after the final norm, as in Apple's and open_clip's MobileCLIP-B. The CLIP head is one
linear projection to the embedding size without bias (docs/method.md §4); timm's own classifier
(which has a bias) is not used.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import timm
import torch
from timm.models.fastvit import FastVit, RepConditionalPosEnc
from torch import nn


def build_timm_trunk(timm_name: str, global_pool: str) -> nn.Module:
    """A registered timm model (``fastvit_mci0`` ... ``vit_base_mci_224``), no weights, no classifier."""
    if not timm.is_model(timm_name):
        raise KeyError(f"timm {timm.__version__} has no model named {timm_name!r}")
    return timm.create_model(timm_name, pretrained=False, num_classes=0, global_pool=global_pool)


def build_fastvit_trunk(spec: Mapping[str, Any], global_pool: str) -> nn.Module:
    """A custom-sized FastViT/MCi trunk from timm's ``FastVit`` class (the nano variant).

    ``spec`` holds FastVit keyword arguments plus ``cpe_kernel``: the kernel of the
    conditional positional encoding in front of each attention stage.
    """
    kwargs = dict(spec)
    cpe_kernel = int(kwargs.pop("cpe_kernel", 7))
    mixers = kwargs["token_mixers"]
    kwargs["pos_embs"] = tuple(
        partial(RepConditionalPosEnc, spatial_shape=(cpe_kernel, cpe_kernel)) if mixer == "attention" else None
        for mixer in mixers
    )
    return FastVit(num_classes=0, global_pool=global_pool, **kwargs)


class ImageEncoder(nn.Module):
    """Pixels [B, 3, S, S] -> un-normalised image features [B, embed_dim]."""

    def __init__(self, trunk: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.num_features = int(trunk.num_features)
        self.proj = nn.Linear(self.num_features, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=self.num_features**-0.5)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be [batch, 3, height, width], got shape {tuple(pixels.shape)}")
        return self.proj(self.trunk(pixels))  # [B, C] -> [B, embed_dim]
