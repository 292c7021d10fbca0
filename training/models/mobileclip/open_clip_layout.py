"""open_clip's MobileCLIP checkpoint layout <-> clipforge's ``MobileClip`` state dict.

open_clip builds MobileCLIP-S1/S2/B and MobileCLIP2-* as a ``CustomTextCLIP``: a ``TimmModel``
image tower and a ``TextTransformer``. Against clipforge's ``MobileClip`` the layouts differ in
three places only (open_clip 3.3, timm 1.0):

- the image projection: open_clip's configs set ``timm_proj: null``, so the timm trunk keeps
  its own classifier as the CLIP projection, a Linear *with* bias: ``visual.trunk.head.fc``
  for FastViT/MCi, ``visual.trunk.head`` for the ViT. clipforge's ``visual.proj`` has no bias
  (Apple's head has none either), so export writes a zero bias and import refuses a non-zero
  one (it cannot be represented);
- the text blocks: ``text.transformer.resblocks.N`` vs ``text.blocks.N`` (same
  ``ResidualAttentionBlock`` inside, so same names below);
- the text projection: an ``nn.Parameter`` [width, embed] used as ``x @ P`` vs an
  ``nn.Linear`` weight [embed, width]: transposed.

Everything else (``visual.trunk.*``, token and positional embeddings, ``ln_final``,
``logit_scale``) has the same name and shape.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from timm.models.fastvit import FastVit
from timm.models.vision_transformer import VisionTransformer

from training.models.mobileclip.key_maps import rename_prefix
from training.models.mobileclip.model import MobileClip

_OURS_BLOCKS = "text.blocks"
_OPEN_CLIP_BLOCKS = "text.transformer.resblocks"
_OURS_TEXT_PROJECTION = "text.text_projection.weight"  # [embed, width]
_OPEN_CLIP_TEXT_PROJECTION = "text.text_projection"  # [width, embed]
_OURS_IMAGE_PROJECTION = "visual.proj.weight"  # [embed, trunk features]


def open_clip_head(model: MobileClip) -> str:
    """Module path of the Linear that open_clip's tower uses as the CLIP image projection."""
    trunk = model.visual.trunk
    if isinstance(trunk, FastVit):
        return "visual.trunk.head.fc"
    if isinstance(trunk, VisionTransformer):
        return "visual.trunk.head"
    raise TypeError(f"no open_clip layout for an image trunk of type {type(trunk).__name__}")


def to_open_clip(state: Mapping[str, torch.Tensor], model: MobileClip) -> dict[str, torch.Tensor]:
    """clipforge ``MobileClip`` keys -> open_clip ``CustomTextCLIP`` keys (``model`` gives the structure)."""
    head = open_clip_head(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == _OURS_IMAGE_PROJECTION:
            out[f"{head}.weight"] = value
            out[f"{head}.bias"] = value.new_zeros(value.shape[0])
        elif key == _OURS_TEXT_PROJECTION:
            out[_OPEN_CLIP_TEXT_PROJECTION] = value.t().contiguous()
        else:
            out[rename_prefix(key, [(_OURS_BLOCKS, _OPEN_CLIP_BLOCKS)]) or key] = value
    return out


def from_open_clip(state: Mapping[str, torch.Tensor], model: MobileClip) -> dict[str, torch.Tensor]:
    """open_clip keys -> clipforge keys. Keys with no counterpart keep their name, so a strict
    load reports them as unexpected."""
    head = open_clip_head(model)
    bias = state.get(f"{head}.bias")
    # A weightless (meta) state dict, as used to check keys and shapes, has no values to test.
    if bias is not None and not bias.is_meta and bool(bias.ne(0).any()):
        raise ValueError(
            f"{head}.bias is non-zero (max |b| = {bias.abs().max().item():.3g}); clipforge's MobileCLIP image "
            "projection has no bias, so this checkpoint cannot be loaded without changing its outputs"
        )
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == f"{head}.bias":
            continue
        if key == f"{head}.weight":
            out[_OURS_IMAGE_PROJECTION] = value
        elif key == _OPEN_CLIP_TEXT_PROJECTION:
            out[_OURS_TEXT_PROJECTION] = value.t().contiguous()
        else:
            out[rename_prefix(key, [(_OPEN_CLIP_BLOCKS, _OURS_BLOCKS)]) or key] = value
    return out
