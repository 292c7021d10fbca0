"""The MobileCLIP model family (docs/method.md §4): MCi/ViT image towers, MCt and base text towers.

``build_mobileclip(name)`` builds a variant from ``variant_config(name)``; ``list_variants()``
names them (``training.models.students.tower_params`` counts their image and text parameters). Every train-time
multi-branch block has ``reparameterize()`` (fold in eval mode, on a copy: docs/method.md §2.8).
The state-dict maps to open_clip's and Apple's checkpoint layouts are ``open_clip_layout`` and
``apple_layout``; loading whole students from checkpoints is ``training.models.checkpoints``, one
level up, because it builds students and ``training.models.students`` builds on this package.
"""

from training.models.mobileclip.config import ImageTowerConfig, MobileClipConfig, TextTowerConfig
from training.models.mobileclip.image_encoder import ImageEncoder
from training.models.mobileclip.model import MobileClip
from training.models.mobileclip.text_blocks import ConvFFN, TextRepMixer, TextRepMixerBlock
from training.models.mobileclip.text_encoder import TextEncoder
from training.models.mobileclip.variants import (
    build_image_tower,
    build_mobileclip,
    build_text_tower,
    list_variants,
    variant_config,
)

__all__ = [
    "ConvFFN",
    "ImageEncoder",
    "ImageTowerConfig",
    "MobileClip",
    "MobileClipConfig",
    "TextEncoder",
    "TextRepMixer",
    "TextRepMixerBlock",
    "TextTowerConfig",
    "build_image_tower",
    "build_mobileclip",
    "build_text_tower",
    "list_variants",
    "variant_config",
]
