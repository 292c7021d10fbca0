"""Reinforcing one pool sample (docs/method.md §2.4-2.5): its stored augmentations, drawn from a
generator seeded by (seed, uid) alone, and the teacher ensemble's embeddings of the replayed
views and of its captions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipforge.config import ReinforcedDatasetConfig
from training.data.augment import replay_many, sample_aug_params
from training.models.open_clip_models import LoadedClip


def uid_seed(seed: int, uid: str) -> np.random.SeedSequence:
    """Seed material that depends only on (seed, uid): stable across processes and orders."""
    digest = int.from_bytes(hashlib.sha256(uid.encode("utf-8")).digest()[:8], "little")
    return np.random.SeedSequence([seed % 2**64, digest])


def augmentations_for(uid: str, width: int, height: int, cfg: ReinforcedDatasetConfig) -> list[list[Any]]:
    """The A stored augmentation records of one sample (deterministic in seed and uid)."""
    rng = np.random.default_rng(uid_seed(cfg.seed, uid))
    return [
        sample_aug_params(
            rng,
            width,
            height,
            scale=(float(cfg.crop_scale[0]), float(cfg.crop_scale[1])),
            num_ops=cfg.rand_augment_ops,
            magnitude=cfg.rand_augment_magnitude,
            num_bins=cfg.rand_augment_bins,
        )
        for _ in range(cfg.num_augmentations)
    ]


@dataclass
class CaptionedSample:
    """A filtered pool sample with its synthetic captions, decoded and ready to reinforce."""

    key: str
    uid: str
    sha256: str | None
    url: str
    caption: str
    jpg: bytes
    image: Image.Image
    syn_text: list[str]


@torch.no_grad()
def _encode_batched(fn: Callable[[Any], torch.Tensor], items: Any, batch_size: int) -> torch.Tensor:
    """Run an encoder over ``items`` (tensor rows or a list) in batches; L2-normalised float32 rows on CPU."""
    outs = [fn(items[start : start + batch_size]).float().cpu() for start in range(0, len(items), batch_size)]
    return F.normalize(torch.cat(outs), dim=-1)


def _image_encoder(teacher: LoadedClip, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    # Normalise on CPU (the teacher's mean/std), then move: works on any device.
    return lambda pixels: teacher.model.encode_image(teacher.normalize_pixels(pixels).to(device))


def _text_encoder(teacher: LoadedClip, device: str) -> Callable[[list[str]], torch.Tensor]:
    # Each teacher tokenises with its own tokenizer and context length.
    return lambda texts: teacher.model.encode_text(teacher.tokenize(texts).to(device))


def encode_chunk(
    samples: Sequence[CaptionedSample],
    params: Sequence[Sequence[Any]],
    teachers: Sequence[LoadedClip],
    batch_size: int,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-ensemble embeddings of n samples: image [n, A, sum D], text [n, 1 + S, sum D]."""
    n, num_augs = len(samples), len(params[0])
    # Replay once per distinct teacher resolution: [n * A, 3, s, s] in [0, 1].
    pixels = {
        size: torch.cat([replay_many(s.image, p, size) for s, p in zip(samples, params, strict=True)])
        for size in sorted({t.image_size for t in teachers})
    }
    texts = [text for s in samples for text in (s.caption, *s.syn_text)]
    image_parts, text_parts = [], []
    for teacher in teachers:
        image_parts.append(_encode_batched(_image_encoder(teacher, device), pixels[teacher.image_size], batch_size))
        text_parts.append(_encode_batched(_text_encoder(teacher, device), texts, batch_size))
    image_emb = torch.cat(image_parts, dim=1).view(n, num_augs, -1)
    text_emb = torch.cat(text_parts, dim=1).view(n, len(texts) // n, -1)
    return image_emb.numpy(), text_emb.numpy()
