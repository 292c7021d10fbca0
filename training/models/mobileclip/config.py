"""What a MobileCLIP variant is made of: the config records ``variants`` fills in and the builders
read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

UNIT_MEAN = (0.0, 0.0, 0.0)
UNIT_STD = (1.0, 1.0, 1.0)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ImageTowerConfig:
    image_size: int
    global_pool: str  # "avg" for MCi (mean pool), "token" for the ViT's class token
    timm_name: str | None = None  # a registered timm model ...
    fastvit: Mapping[str, Any] | None = None  # ... or FastVit kwargs for a custom size

    def __post_init__(self) -> None:
        if (self.timm_name is None) == (self.fastvit is None):
            raise ValueError("an image tower needs exactly one of timm_name or fastvit")


@dataclass(frozen=True)
class TextTowerConfig:
    kind: Literal["base", "mct"]
    width: int
    heads: int
    transformer_layers: int  # attention blocks; MCt adds one Text-RepMixer block at each end
    causal: bool
    context_length: int = 77
    vocab_size: int = 49408
    mlp_ratio: float = 4.0
    repmixer_kernel: int = 11


@dataclass(frozen=True)
class MobileClipConfig:
    name: str
    embed_dim: int
    image: ImageTowerConfig
    text: TextTowerConfig
    mean: tuple[float, float, float]  # pixel normalisation applied before encode_image
    std: tuple[float, float, float]
    tokenizer: str  # open_clip get_tokenizer name (all resolve to the CLIP BPE, vocab 49408)
    paper_params_m: tuple[float, float] | None = None  # docs/method.md §4: image, text (millions)

    @property
    def image_size(self) -> int:
        return self.image.image_size

    @property
    def context_length(self) -> int:
        return self.text.context_length
