"""The embedded teacher corpus decoded into memory, and the batched crops the bootstrap trainers take.

The corpus is small, so it is decoded once ([N, 3, S, S] uint8) and batches are cropped there
with one batched ``roi_align`` (random resized crop, no flip); no DataLoader. About 5% of it is
held out to check that each bootstrapped model learned the scenes.
"""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipforge.progress import Progress, no_progress
from training.data.embedded_layout import TEACHER_SHARDS_DIR
from training.data.tar_shards import IMAGE_EXTS, iter_tar_samples

HOLDOUT_FRACTION = 0.05
# KEY.neg.txt: a hard negative per KEY.txt line, line for line (NegCLIP-style; optional).
NEGATIVES_EXT = "neg.txt"

# The corpus is stored at this multiple of the training resolution, so the smallest crops
# still have source pixels to resample from.
STORE_FACTOR = 1.5
# Mild crops: a caption names every object, its count and position, and a crop that cuts
# objects away makes it wrong.
CROP_SCALE = (0.8, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


@dataclass
class Corpus:
    """The teacher corpus decoded into memory."""

    images: torch.Tensor  # [N, 3, S, S] uint8, shorter side resized to S then centre-cropped
    captions: list[str]  # the first line of each KEY.txt: the full caption
    keys: list[str]
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> samples dropped
    # KEY.json per sample when the corpus has it (the embedded generator's scene ground truth).
    attributes: list[dict[str, Any] | None] = field(default_factory=list)
    # Every non-empty line of each KEY.txt (the full caption first); [] means captions alone.
    lines: list[list[str]] = field(default_factory=list)
    # KEY.neg.txt's lines, aligned with ``lines``, when every sample has them; else [].
    negatives: list[list[str]] = field(default_factory=list)
    # Samples without a usable KEY.neg.txt (any makes ``negatives`` empty: reported, not fatal).
    negatives_missing: int = 0

    @property
    def caption_lines(self) -> list[list[str]]:
        return self.lines or [[c] for c in self.captions]

    def __len__(self) -> int:
        return len(self.captions)


def _square_uint8(image: Image.Image, side: int) -> torch.Tensor:
    """PIL image -> [3, side, side] uint8: shorter side resized to ``side``, centre crop."""
    image = image.convert("RGB")
    scale = side / min(image.size)
    size = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def read_corpus(shard_dir: Path, side: int, progress: Progress = no_progress) -> Corpus:
    """Decode every ``KEY.jpg`` + ``KEY.txt`` sample of ``shard_dir/*.tar`` into memory; KEY.txt
    holds one caption per line, the full one first.

    Samples without an image or caption, with an empty caption or an undecodable image are
    skipped and counted by reason; an empty corpus is an error.
    """
    shards = sorted(Path(shard_dir).glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"no teacher corpus shards (*.tar) in {shard_dir}")
    images: list[torch.Tensor] = []
    captions: list[str] = []
    keys: list[str] = []
    attributes: list[dict[str, Any] | None] = []
    lines: list[list[str]] = []
    negatives: list[list[str] | None] = []
    skipped: Counter[str] = Counter()
    for shard in progress(shards, "decode corpus", len(shards)):
        for key, members in iter_tar_samples(shard):
            image_bytes = next((members[ext] for ext in IMAGE_EXTS if ext in members), None)
            if image_bytes is None or "txt" not in members:
                skipped["missing image or caption"] += 1
                continue
            text = members["txt"].decode("utf-8", errors="replace")
            sample_lines = [line.strip() for line in text.splitlines() if line.strip()]
            if not sample_lines:
                skipped["empty caption"] += 1
                continue
            try:
                with Image.open(io.BytesIO(image_bytes)) as img:
                    images.append(_square_uint8(img, side))
            except (OSError, ValueError, Image.DecompressionBombError):
                skipped["undecodable image"] += 1
                continue
            captions.append(sample_lines[0])
            lines.append(sample_lines)
            negatives.append(_negative_lines(members.get(NEGATIVES_EXT), len(sample_lines)))
            keys.append(key)
            attributes.append(_attributes(members.get("json")))
    if not images:
        raise ValueError(f"teacher corpus {shard_dir} holds no usable sample (skipped: {dict(skipped)})")
    # Negatives are used only when every sample has a full set (a batch mixes samples).
    complete = [n for n in negatives if n is not None]
    missing = len(negatives) - len(complete)
    return Corpus(torch.stack(images), captions, keys, skipped, attributes, lines, [] if missing else complete, missing)


def _negative_lines(raw: bytes | None, count: int) -> list[str] | None:
    """KEY.neg.txt's lines when there is one non-empty negative per caption line, else None."""
    if raw is None:
        return None
    lines = [line.strip() for line in raw.decode("utf-8", errors="replace").splitlines()]
    return lines if len(lines) == count and all(lines) else None


def _attributes(raw: bytes | None) -> dict[str, Any] | None:
    """A sample's KEY.json, or None when absent or unreadable (it only feeds held-out checks)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices): a seeded ``fraction`` (at least 2, at most n // 2) held out."""
    held = min(max(2, round(n * fraction)), n // 2)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[held:].sort().values, perm[:held].sort().values


def random_resized_crop(
    images: torch.Tensor,
    out_size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> torch.Tensor:
    """Batched RandomResizedCrop (no flip): [B, 3, S, S] uint8 -> [B, 3, out, out] float in [0, 1].

    Per sample: area fraction ~ U(scale), log aspect ~ U(log ratio), box clipped to the
    image, position uniform. Every crop is resampled bilinearly by one ``roi_align`` call
    (2x2 samples per output pixel, which also smooths mild downscaling).
    """
    from torchvision.ops import roi_align

    b, _, h, w = images.shape
    area = torch.empty(b).uniform_(*scale, generator=generator) * (h * w)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_r.exp()
    cw = (area * aspect).sqrt().clamp(1, w)
    ch = (area / aspect).sqrt().clamp(1, h)
    x0 = torch.rand(b, generator=generator) * (w - cw)
    y0 = torch.rand(b, generator=generator) * (h - ch)
    boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], dim=1)  # [B, 5]
    pixels = images.float() / 255.0
    return roi_align(pixels, boxes, output_size=(out_size, out_size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


def resize_full(images: torch.Tensor, out_size: int) -> torch.Tensor:
    """The whole image, as inference sees it: [B, 3, S, S] uint8 -> [B, 3, out, out] float in [0, 1]."""
    pixels = images.float() / 255.0
    if images.shape[-1] == out_size:
        return pixels
    return F.interpolate(pixels, size=(out_size, out_size), mode="bicubic", antialias=True).clamp(0, 1)


def load_teacher_corpus(embedded_corpus: Path, image_size: int, progress: Progress = no_progress) -> Corpus:
    """The teacher corpus of an ``embedded_corpus`` stage folder, stored at STORE_FACTOR x
    ``image_size`` (what the bootstrapping stages train on)."""
    return read_corpus(embedded_corpus / TEACHER_SHARDS_DIR, round(image_size * STORE_FACTOR), progress=progress)


def split_summary(corpus: Corpus, train_idx: torch.Tensor, held_idx: torch.Tensor) -> dict[str, Any]:
    """What a bootstrapping stage reports of its corpus: sizes of each part, chance top-1, skips."""
    return {
        "corpus_samples": len(corpus),
        "train_samples": len(train_idx),
        "heldout_samples": len(held_idx),
        "random_top1": 1.0 / len(held_idx),
        "skipped": dict(corpus.skipped),
        "hard_negatives": bool(corpus.negatives),
        "hard_negatives_missing": corpus.negatives_missing,
    }
