"""``MobileClip``: an image tower and a text tower with a shared embedding size.

Features come out un-normalised, as from open_clip's ``encode_image``/``encode_text``:
callers (``training.models.students.StudentClip``) normalise and apply the variant's pixel
mean/std themselves. The towers are registered as ``visual`` and ``text`` (open_clip's
names, which ``export.reparameterize.tower_of`` relies on); ``image_tower`` / ``text_tower``
name the same modules.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.models.mobileclip.config import MobileClipConfig
from training.models.mobileclip.image_encoder import ImageEncoder
from training.models.mobileclip.text_encoder import TextEncoder


class MobileClip(nn.Module):
    def __init__(self, visual: ImageEncoder, text: TextEncoder, config: MobileClipConfig) -> None:
        super().__init__()
        self.visual = visual
        self.text = text
        self.config = config
        # CLIP's initial temperature 1/0.07, stored as a log; callers cap exp() at 100.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def image_tower(self) -> ImageEncoder:
        return self.visual

    @property
    def text_tower(self) -> TextEncoder:
        return self.text

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] pixels (normalised as the caller chooses) -> [B, embed_dim], not normalised."""
        return self.visual(pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, L] int token ids -> [B, embed_dim], not normalised."""
        return self.text(tokens)

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(pixels), self.encode_text(tokens)
