"""The MobileCLIP model family (METHOD.md 4): MCi/ViT image towers, MCt and base text towers.

``build_mobileclip(name)`` builds a variant from ``variant_config(name)``; ``list_variants()``
names them; ``count_params(model)`` gives (image, text) parameter counts. Every train-time
multi-branch block has ``reparameterize()`` (fold in eval mode, on a copy: METHOD.md 2.8).
open_clip's and Apple's checkpoint layouts: ``training.models.checkpoints`` (not re-exported
here: it builds students, and ``training.models.students`` imports this package).
"""

from training.models.mobileclip.image_encoder import ImageEncoder
from training.models.mobileclip.model import MobileClip
from training.models.mobileclip.text_blocks import ConvFFN, TextRepMixer, TextRepMixerBlock
from training.models.mobileclip.text_encoder import TextEncoder
from training.models.mobileclip.variants import (
    ImageTowerConfig,
    MobileClipConfig,
    TextTowerConfig,
    build_image_tower,
    build_mobileclip,
    build_text_tower,
    count_params,
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
    "count_params",
    "list_variants",
    "variant_config",
]
