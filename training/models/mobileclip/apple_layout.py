"""Apple's ml-mobileclip checkpoint layout <-> clipforge's ``MobileClip`` state dict.

Apple's released MobileCLIP checkpoints (``mobileclip_s0.pt`` ... ``mobileclip_b.pt``) are the
state dict of ``mobileclip.clip.CLIP`` in train form: ``create_model_and_transforms`` loads them
into the unfolded module tree and only then calls ``reparameterize_model``. So this layout is
train form only (no ``reparam_conv`` keys). Its parts:

- ``image_encoder.model.*``: an MCi (FastViT) in the original FastViT layout (``patch_embed``,
  one flat ``network.N`` list per stage of [downsample, positional encoding, blocks],
  ``conv_exp``, MobileOne ``rbr_conv``/``rbr_scale``/``rbr_skip`` branches) ending in the CLIP
  head ``head.proj`` [C, D], used as ``x @ proj``; for B a ViT (``patch_emb.N.block``,
  ``transformer.N``, ``post_transformer_norm``, ``pos_embed.pos_embed.pos_embed``
  [1, 1, N, C], ``classifier.proj`` [768, D]);
- ``text_encoder.*``: ``embedding_layer``, ``positional_embedding.pos_embed.pos_embed``
  [1, 1, L, W], ``transformer.N`` (pre-norm blocks as ``pre_norm_mha`` = [LayerNorm, MHA with a
  fused ``qkv_proj`` in nn.MultiheadAttention's q|k|v order, Dropout] and ``pre_norm_ffn`` =
  [LayerNorm, Linear, GELU, Dropout, Linear, Dropout]; MCt's first and last are Text-RepMixer
  blocks), ``final_layer_norm``, ``projection_layer`` [W, D] used as ``x @ P``;
- ``logit_scale``.

Image trunks are read with timm's own converters (the ones timm and open_clip use for Apple's
checkpoints) and written by their inverse here; text keys map through one table, both ways.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from timm.models import fastvit, vision_transformer_hybrid
from timm.models.fastvit import FastVit
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from training.models.mobileclip.key_maps import NamePairs, rename_parts, rename_prefix, swapped
from training.models.mobileclip.model import MobileClip

IMAGE_PREFIX = "image_encoder.model."
TEXT_PREFIX = "text_encoder."

# Inside one text block, (clipforge, Apple). Attention blocks are open_clip's
# ResidualAttentionBlock vs Apple's TransformerEncoder; Text-RepMixer blocks are ours vs Apple's
# RepMixerBlock, whose mixer is a MobileOne block (conv branch + BatchNorm skip, no scale
# branch for a (1, k) kernel) and whose norm is a MobileOne block with only the BatchNorm skip.
_TEXT_BLOCK: NamePairs = (
    ("ln_1", "pre_norm_mha.0"),
    ("attn.in_proj_weight", "pre_norm_mha.1.qkv_proj.weight"),
    ("attn.in_proj_bias", "pre_norm_mha.1.qkv_proj.bias"),
    ("attn.out_proj", "pre_norm_mha.1.out_proj"),
    ("ln_2", "pre_norm_ffn.0"),
    ("mlp.c_fc", "pre_norm_ffn.1"),
    ("mlp.c_proj", "pre_norm_ffn.4"),
    ("token_mixer.mixer_conv", "token_mixer.mixer.rbr_conv.0.conv"),
    ("token_mixer.mixer_bn", "token_mixer.mixer.rbr_conv.0.bn"),
    ("token_mixer.mixer_skip", "token_mixer.mixer.rbr_skip"),
    ("token_mixer.norm", "token_mixer.norm.rbr_skip"),
    ("token_mixer.gamma", "token_mixer.layer_scale"),
    ("ffn.dw_conv", "convffn.conv.conv"),
    ("ffn.dw_bn", "convffn.conv.bn"),
    ("ffn.fc1", "convffn.fc1"),
    ("ffn.fc2", "convffn.fc2"),
    ("layer_scale", "layer_scale"),
)
# Whole-tower names outside the blocks, (clipforge, Apple); the two tensors whose shape
# changes are handled in _text_to_apple / _text_from_apple.
_TEXT_TOP: NamePairs = (
    ("token_embedding", "embedding_layer"),
    ("ln_final", "final_layer_norm"),
)
_POSITIONS = "positional_embedding"  # ours [L, W]
_APPLE_POSITIONS = "positional_embedding.pos_embed.pos_embed"  # Apple's [1, 1, L, W]
_PROJECTION = "text_projection.weight"  # ours [D, W]
_APPLE_PROJECTION = "projection_layer"  # Apple's [W, D]

# timm FastViT -> original FastViT fragment names: the inverse of the renames in timm's
# fastvit.checkpoint_filter_fn (stage prefixes are handled by _mci_stage_prefixes).
_MCI_PARTS: NamePairs = (
    ("stem", "patch_embed"),
    ("conv_kxk", "rbr_conv"),
    ("conv_scale", "rbr_scale"),
    ("identity", "rbr_skip"),
    # Only the final MobileOne block's SE is Apple's SEBlock (reduce/expand); the downsampling
    # large-kernel convs use timm's SqueezeExcite, whose fc1/fc2 names Apple's code shares.
    ("final_conv.se.fc1", "conv_exp.se.reduce"),
    ("final_conv.se.fc2", "conv_exp.se.expand"),
    ("final_conv", "conv_exp"),
    ("large_conv", "lkb_origin"),
    ("mlp", "convffn"),
    ("layer_scale.gamma", "layer_scale"),
    ("layer_scale_1.gamma", "layer_scale_1"),
    ("layer_scale_2.gamma", "layer_scale_2"),
)
# timm's vit_base_mci_224 -> Apple's ViT-B: the inverse of timm's
# vision_transformer_hybrid._convert_mobileclip (positions and head handled in _vit_to_apple).
_VIT_TOP: NamePairs = (
    ("patch_embed.backbone", "patch_emb"),
    ("blocks", "transformer"),
    ("norm", "post_transformer_norm"),
)
_VIT_PARTS: NamePairs = (
    ("conv", "block.conv"),
    ("bn", "block.norm"),
    ("norm1", "pre_norm_mha.0"),
    ("attn.qkv", "pre_norm_mha.1.qkv_proj"),
    ("attn.proj", "pre_norm_mha.1.out_proj"),
    ("norm2", "pre_norm_ffn.0"),
    ("mlp.fc1", "pre_norm_ffn.1"),
    ("mlp.fc2", "pre_norm_ffn.4"),
)
_MCI_HEAD = "head.proj"  # Apple's MCi CLIP head [C, D]
_VIT_HEAD = "classifier.proj"  # Apple's ViT-B CLIP head [768, D]
_VIT_POSITIONS = "pos_embed"  # timm [1, N, C]; Apple's pos_embed.pos_embed.pos_embed is [1, 1, N, C]
_IMAGE_PROJECTION = "visual.proj.weight"  # ours [D, C]


def _mci_stage_prefixes(trunk: FastVit) -> list[tuple[str, str]]:
    """timm stage prefixes -> Apple's flat ``network`` indices.

    Apple's list holds, stage after stage: the downsampling PatchEmbed in front of it (none for
    the first stage, whose input comes from the stem), the conditional positional encoding
    (only where the stage has one), then the stage's blocks as one Sequential.
    """
    pairs: list[tuple[str, str]] = []
    index = 0
    for number, stage in enumerate(trunk.stages):
        if not isinstance(stage.downsample, nn.Identity):
            pairs.append((f"stages.{number}.downsample", f"network.{index}"))
            index += 1
        if not isinstance(stage.pos_emb, nn.Identity):
            pairs.append((f"stages.{number}.pos_emb.pos_enc", f"network.{index}.pe"))
            index += 1
        pairs.append((f"stages.{number}.blocks", f"network.{index}"))
        index += 1
    return pairs


def _mci_to_apple(trunk_state: Mapping[str, torch.Tensor], trunk: FastVit) -> dict[str, torch.Tensor]:
    stage_prefixes = _mci_stage_prefixes(trunk)
    return {
        rename_parts(rename_prefix(key, stage_prefixes) or key, _MCI_PARTS): value for key, value in trunk_state.items()
    }


def _vit_to_apple(trunk_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in trunk_state.items():
        if key == _VIT_POSITIONS:
            out["pos_embed.pos_embed.pos_embed"] = value.unsqueeze(0)  # [1, N, C] -> [1, 1, N, C]
        else:
            out[rename_parts(rename_prefix(key, _VIT_TOP) or key, _VIT_PARTS)] = value
    return out


def _image_to_apple(state: Mapping[str, torch.Tensor], model: MobileClip) -> dict[str, torch.Tensor]:
    trunk = model.visual.trunk
    trunk_state = {key.removeprefix("visual.trunk."): v for key, v in state.items() if key.startswith("visual.trunk.")}
    projection = state[_IMAGE_PROJECTION].t().contiguous()  # [D, C] -> Apple's [C, D]
    if isinstance(trunk, FastVit):
        out = _mci_to_apple(trunk_state, trunk)
        out[_MCI_HEAD] = projection
    elif isinstance(trunk, VisionTransformer):
        out = _vit_to_apple(trunk_state)
        out[_VIT_HEAD] = projection
    else:
        raise TypeError(f"no Apple layout for an image trunk of type {type(trunk).__name__}")
    return {IMAGE_PREFIX + key: value for key, value in out.items()}


def _image_from_apple(state: Mapping[str, torch.Tensor], model: MobileClip) -> dict[str, torch.Tensor]:
    trunk = model.visual.trunk
    image = {key: value for key, value in state.items() if key.startswith(IMAGE_PREFIX)}
    if isinstance(trunk, FastVit):
        head = IMAGE_PREFIX + _MCI_HEAD
        projection = image.pop(head, None)
        relative = {key.removeprefix(IMAGE_PREFIX): value for key, value in image.items()}
        trunk_state = fastvit.checkpoint_filter_fn(relative, trunk)
    elif isinstance(trunk, VisionTransformer):
        head = IMAGE_PREFIX + _VIT_HEAD
        projection = image.pop(head, None)
        # timm's hybrid-ViT converter keys on the prefixed stem name, so it gets the prefixed dict.
        trunk_state = vision_transformer_hybrid.checkpoint_filter_fn(image, trunk)
    else:
        raise TypeError(f"no Apple layout for an image trunk of type {type(trunk).__name__}")
    out = {f"visual.trunk.{key}": value for key, value in trunk_state.items()}
    if projection is not None:  # absent: the strict load names visual.proj.weight as missing
        out[_IMAGE_PROJECTION] = projection.t().contiguous()  # Apple's [C, D] -> [D, C]
    return out


def _text_to_apple(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith("text."):
            continue
        key = key.removeprefix("text.")
        if key == _POSITIONS:
            out[_APPLE_POSITIONS] = value.reshape(1, 1, *value.shape)  # [L, W] -> [1, 1, L, W]
        elif key == _PROJECTION:
            out[_APPLE_PROJECTION] = value.t().contiguous()  # [D, W] -> [W, D]
        elif key.startswith("blocks."):
            _, index, inner = key.split(".", 2)
            renamed = rename_prefix(inner, _TEXT_BLOCK)
            if renamed is None:
                raise KeyError(f"text.{key} has no name in Apple's layout")
            out[f"transformer.{index}.{renamed}"] = value
        else:
            renamed = rename_prefix(key, _TEXT_TOP)
            if renamed is None:
                raise KeyError(f"text.{key} has no name in Apple's layout")
            out[renamed] = value
    return {TEXT_PREFIX + key: value for key, value in out.items()}


def _text_from_apple(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    block_names, top_names = swapped(_TEXT_BLOCK), swapped(_TEXT_TOP)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not key.startswith(TEXT_PREFIX):
            continue
        inner = key.removeprefix(TEXT_PREFIX)
        if inner == _APPLE_POSITIONS:
            out[f"text.{_POSITIONS}"] = value.reshape(value.shape[-2:])  # [1, 1, L, W] -> [L, W]
        elif inner == _APPLE_PROJECTION:
            out[f"text.{_PROJECTION}"] = value.t().contiguous()  # [W, D] -> [D, W]
        elif inner.startswith("transformer.") and inner.count(".") >= 2:
            _, index, rest = inner.split(".", 2)
            renamed = rename_prefix(rest, block_names)
            out[f"text.blocks.{index}.{renamed}" if renamed is not None else key] = value
        else:
            renamed = rename_prefix(inner, top_names)
            out[f"text.{renamed}" if renamed is not None else key] = value
    return out


def to_apple(state: Mapping[str, torch.Tensor], model: MobileClip) -> dict[str, torch.Tensor]:
    """clipforge ``MobileClip`` keys (train form) -> Apple's ``CLIP`` keys; ``model`` gives the structure."""
    return {**_image_to_apple(state, model), **_text_to_apple(state), "logit_scale": state["logit_scale"]}


def from_apple(state: Mapping[str, torch.Tensor], model: MobileClip) -> dict[str, torch.Tensor]:
    """Apple's ``CLIP`` keys -> clipforge keys. Text keys with no counterpart keep their name,
    so a strict load reports them as unexpected."""
    out = {**_image_from_apple(state, model), **_text_from_apple(state)}
    rest = {key: value for key, value in state.items() if not key.startswith((IMAGE_PREFIX, TEXT_PREFIX))}
    return {**out, **rest}
