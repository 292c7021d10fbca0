"""The MobileCLIP variant registry: ``variant_config(name)`` -> ``build_mobileclip(name)``.

Variants follow docs/method.md §4 and the public configs (Apple's ml-mobileclip, open_clip's
MobileCLIP*/MobileCLIP2* configs): S0 pairs MCi0 with the MCt text tower; S1/S2/B and every
MobileCLIP2 variant use the base 12-layer text transformer (causal only for B). MobileCLIP v1
and MobileCLIP2 S0/S2/B take [0, 1] pixels (mean 0, std 1); MobileCLIP2 S3/S4 use OpenAI's
mean/std. ``MobileCLIP-nano`` is clipforge's CPU-sized member built from the same block types
(MobileOne stem, RepMixer stages, an attention stage with a conditional positional encoding;
MCt text with Text-RepMixer blocks) for the embedded default.

MobileCLIP2-S0's text tower: Apple's README lists 11.4 + 42.4M (MCt-sized), but the configs that
load the released MobileCLIP2-S0 weights (Apple's mobileclip2/model_configs and open_clip's)
hold the 12-layer base text transformer (63.4M); the registry follows the configs.

Building under ``with torch.device("meta"):`` gives a weightless model for counting.
"""

from __future__ import annotations

import timm

from training.models.mobileclip.config import (
    OPENAI_MEAN,
    OPENAI_STD,
    UNIT_MEAN,
    UNIT_STD,
    ImageTowerConfig,
    MobileClipConfig,
    TextTowerConfig,
)
from training.models.mobileclip.image_encoder import ImageEncoder, build_fastvit_trunk, build_timm_trunk
from training.models.mobileclip.model import MobileClip
from training.models.mobileclip.text_encoder import TextEncoder, text_block_layout


def _mci(timm_name: str) -> ImageTowerConfig:
    return ImageTowerConfig(image_size=256, global_pool="avg", timm_name=timm_name)


_VIT_B = ImageTowerConfig(image_size=224, global_pool="token", timm_name="vit_base_mci_224")

_MCT = TextTowerConfig(kind="mct", width=512, heads=8, transformer_layers=4, causal=False)

_BASE = TextTowerConfig(kind="base", width=512, heads=8, transformer_layers=12, causal=False)

_BASE_CAUSAL = TextTowerConfig(kind="base", width=512, heads=8, transformer_layers=12, causal=True)

_BASE_768 = TextTowerConfig(kind="base", width=768, heads=12, transformer_layers=12, causal=False)

# About 0.3M image + 6.9M text parameters (6.3M of them the 49408 x 128 token table), 64 px.
# Stage widths double so timm's depthwise downsampling convs divide evenly; the attention
# stage sees a 2x2 map at 64 px, hence a 3x3 conditional positional encoding.
_NANO_IMAGE = ImageTowerConfig(
    image_size=64,
    global_pool="avg",
    fastvit={
        "layers": (1, 1, 2, 1),
        "embed_dims": (16, 32, 64, 128),
        "mlp_ratios": (3.0, 3.0, 3.0, 3.0),
        "se_downsamples": (False, False, True, True),
        "token_mixers": ("repmixer", "repmixer", "repmixer", "attention"),
        "lkc_use_act": True,
        "cpe_kernel": 3,
    },
)

# 32 tokens, as the teachers' configs: the embedded captions are at most 32 tokens long (SOT and
# EOT included), and 77 positions made the text tower 2x the image tower's cost per step.
_NANO_TEXT = TextTowerConfig(kind="mct", width=128, heads=4, transformer_layers=2, causal=False, context_length=32)


def _variants() -> dict[str, MobileClipConfig]:
    configs = [
        MobileClipConfig("MobileCLIP-nano", 128, _NANO_IMAGE, _NANO_TEXT, UNIT_MEAN, UNIT_STD, "ViT-B-32"),
        MobileClipConfig(
            "MobileCLIP-S0", 512, _mci("fastvit_mci0"), _MCT, UNIT_MEAN, UNIT_STD, "ViT-B-32", (11.4, 42.4)
        ),
        MobileClipConfig(
            "MobileCLIP-S1", 512, _mci("fastvit_mci1"), _BASE, UNIT_MEAN, UNIT_STD, "MobileCLIP-S1", (21.5, 63.4)
        ),
        MobileClipConfig(
            "MobileCLIP-S2", 512, _mci("fastvit_mci2"), _BASE, UNIT_MEAN, UNIT_STD, "MobileCLIP-S2", (35.7, 63.4)
        ),
        MobileClipConfig("MobileCLIP-B", 512, _VIT_B, _BASE_CAUSAL, UNIT_MEAN, UNIT_STD, "MobileCLIP-B", (86.3, 63.4)),
        MobileClipConfig("MobileCLIP2-S0", 512, _mci("fastvit_mci0"), _BASE, UNIT_MEAN, UNIT_STD, "MobileCLIP2-S0"),
        MobileClipConfig("MobileCLIP2-S2", 512, _mci("fastvit_mci2"), _BASE, UNIT_MEAN, UNIT_STD, "MobileCLIP2-S2"),
        MobileClipConfig("MobileCLIP2-B", 512, _VIT_B, _BASE_CAUSAL, UNIT_MEAN, UNIT_STD, "MobileCLIP2-B"),
    ]
    # MCi3/MCi4 arrived in later timm releases; register them only where timm has them.
    for size, timm_name in (("S3", "fastvit_mci3"), ("S4", "fastvit_mci4")):
        if timm.is_model(timm_name):
            configs.append(
                MobileClipConfig(
                    f"MobileCLIP2-{size}",
                    768,
                    _mci(timm_name),
                    _BASE_768,
                    OPENAI_MEAN,
                    OPENAI_STD,
                    f"MobileCLIP2-{size}",
                )
            )
    return {config.name: config for config in configs}


VARIANTS: dict[str, MobileClipConfig] = _variants()

ALIASES: dict[str, str] = {
    "nano": "MobileCLIP-nano",
    "S0": "MobileCLIP-S0",
    "S1": "MobileCLIP-S1",
    "S2": "MobileCLIP-S2",
    "B": "MobileCLIP-B",
}


def list_variants() -> list[str]:
    """Canonical variant names (short aliases such as ``S0`` or ``nano`` also resolve)."""
    return list(VARIANTS)


def variant_config(name: str) -> MobileClipConfig:
    canonical = ALIASES.get(name, name)
    if canonical not in VARIANTS:
        raise KeyError(f"unknown MobileCLIP variant {name!r}; known: {list_variants()} (aliases: {sorted(ALIASES)})")
    return VARIANTS[canonical]


def build_image_tower(config: MobileClipConfig) -> ImageEncoder:
    image = config.image
    if image.timm_name is not None:
        trunk = build_timm_trunk(image.timm_name, image.global_pool)
    else:
        assert image.fastvit is not None  # guaranteed by ImageTowerConfig.__post_init__
        trunk = build_fastvit_trunk(image.fastvit, image.global_pool)
    return ImageEncoder(trunk, config.embed_dim)


def build_text_tower(config: MobileClipConfig) -> TextEncoder:
    text = config.text
    return TextEncoder(
        blocks=text_block_layout(text.kind, text.transformer_layers),
        width=text.width,
        heads=text.heads,
        embed_dim=config.embed_dim,
        context_length=text.context_length,
        vocab_size=text.vocab_size,
        mlp_ratio=text.mlp_ratio,
        causal=text.causal,
        repmixer_kernel=text.repmixer_kernel,
    )


def build_mobileclip(name: str) -> MobileClip:
    """A freshly initialised (no pretrained weights) model of the named variant, in train mode."""
    config = variant_config(name)
    return MobileClip(build_image_tower(config), build_text_tower(config), config)
