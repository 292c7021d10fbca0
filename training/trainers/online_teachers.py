"""Teachers run during training (CLIP-KD's online setting), in place of the stored embeddings.

The same view the student sees (the stored augmentation, replayed at each teacher's own
resolution by the reinforced loader) and the same captions (tokenised by each teacher's own
tokenizer) go through the frozen teachers, in eval mode and without gradients. The result has
the stored embeddings' layout, ``[B, sum D_k]`` of per-teacher unit vectors, so every loss
takes either without knowing which it got.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from training.data.reinforced import TEACHER_PIXELS, TEACHER_TOKENS_REAL, TEACHER_TOKENS_SYN
from training.models.open_clip_models import LoadedClip


class OnlineTeachers:
    def __init__(self, teachers: Sequence[LoadedClip], device: torch.device) -> None:
        if not teachers:
            raise ValueError("online teacher embeddings need at least one teacher")
        self.teachers = list(teachers)
        for teacher in self.teachers:
            teacher.model.to(device).eval().requires_grad_(False)

    @property
    def dims(self) -> list[int]:
        return [t.embed_dim for t in self.teachers]

    @property
    def scales(self) -> list[float]:
        return [t.logit_scale for t in self.teachers]

    def loader_inputs(self) -> list[tuple[object, int]]:
        """What the reinforced loader must add per teacher: (its tokenizer, its resolution)."""
        return [(t.tokenize, t.image_size) for t in self.teachers]

    @torch.no_grad()
    def embed(
        self, batch: Mapping[str, torch.Tensor], pixels: torch.Tensor, with_synthetic: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(t_img, t_txt_real, t_txt_syn or None), each [B, sum D_k], for one loader batch;
        ``pixels`` [B, 3, S, S] is the student's view (used where a teacher shares its size)."""
        device = pixels.device
        images, reals, syns = [], [], []
        for k, teacher in enumerate(self.teachers):
            view = batch.get(f"{TEACHER_PIXELS}{k}", pixels).to(device)  # [B, 3, S_k, S_k]
            images.append(F.normalize(teacher.model.encode_image(teacher.normalize_pixels(view)).float(), dim=-1))
            reals.append(self._text(teacher, batch[f"{TEACHER_TOKENS_REAL}{k}"].to(device)))
            if with_synthetic:
                syns.append(self._text(teacher, batch[f"{TEACHER_TOKENS_SYN}{k}"].to(device)))
        return torch.cat(images, dim=1), torch.cat(reals, dim=1), torch.cat(syns, dim=1) if with_synthetic else None

    @staticmethod
    def _text(teacher: LoadedClip, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(teacher.model.encode_text(tokens).float(), dim=-1)
