"""DataComp's basic filter and the CLIP-score filter, as functions of captions, sizes and scores
(docs/method.md §2.2).

Basic filter, on each caption and the original image size (as DataComp's baseline): more than
``min_words`` words, more than ``min_chars`` characters, English (when ``require_english``;
see :mod:`pipelines.pool.english`), shorter side at least ``min_image_side``, aspect ratio (long /
short) at most ``max_aspect_ratio``. CLIP score: the cosine between a sample's image and
caption embeddings, averaged over the teacher ensemble, each teacher with its own
preprocessing and tokenizer; ``mode`` keeps ``score >= threshold``, the top ``top_fraction``,
or everything (``none``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from clipforge.config import ClipScoreFilterConfig, FilteredPoolConfig
from pipelines.pool.english import is_english

# Rules in the order they are tested; dropped.parquet names the first that failed.
RULE_WORDS = "caption_words"
RULE_CHARS = "caption_chars"
RULE_ENGLISH = "english"
RULE_IMAGE_SIDE = "image_side"
RULE_ASPECT = "aspect_ratio"
RULE_CLIP = "clip_score"
RULES: tuple[str, ...] = (RULE_WORDS, RULE_CHARS, RULE_ENGLISH, RULE_IMAGE_SIDE, RULE_ASPECT, RULE_CLIP)


def basic_rule(text: str, width: int, height: int, cfg: FilteredPoolConfig) -> str | None:
    """The first basic rule a sample fails, or None when it passes all of them.

    ``width``/``height`` are the original image size (DataComp filters on those).
    """
    if len(text.split()) <= cfg.min_words:
        return RULE_WORDS
    if len(text) <= cfg.min_chars:
        return RULE_CHARS
    if cfg.require_english and not is_english(text):
        return RULE_ENGLISH
    short, long = min(width, height), max(width, height)
    if short < cfg.min_image_side:
        return RULE_IMAGE_SIDE
    if long / short > cfg.max_aspect_ratio:
        return RULE_ASPECT
    return None


def basic_filter(manifest: pd.DataFrame, cfg: FilteredPoolConfig) -> pd.Series:
    """Per manifest row, the first failed basic rule (None when it passes)."""
    rules = [
        basic_rule(str(text), int(w), int(h), cfg)
        for text, w, h in zip(manifest["text"], manifest["original_width"], manifest["original_height"], strict=True)
    ]
    return pd.Series(rules, index=manifest.index, dtype=object)


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run small per-image tensor ops on one thread.

    Resizing one 64-px image is far too little work to split across threads; with intra-op
    threads on a busy machine the wake-ups dominate (measured: 256 images took 8 s with 2
    threads, 0.4 s with 1, on a loaded 2-core box).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.inference_mode()
def ensemble_clip_scores(teachers: Sequence[Any], images: Sequence[Image.Image], captions: Sequence[str]) -> np.ndarray:
    """Image-caption cosine per sample, averaged over teachers: float64 [B] in [-1, 1].

    Each teacher (a ``training.models.open_clip_models.LoadedClip``) preprocesses with its own resolution
    and normalisation and tokenizes with its own tokenizer; embeddings come L2-normalised, so
    the row-wise dot product of image [B, D_k] and text [B, D_k] is the cosine.
    """
    total = torch.zeros(len(images), dtype=torch.float64)
    # pixels_from_pil depends on the teacher's resolution only (normalisation happens inside
    # encode_image), so teachers sharing a resolution share the resized batch.
    pixels_by_size: dict[int, torch.Tensor] = {}
    for teacher in teachers:
        if teacher.image_size not in pixels_by_size:
            with _single_thread():
                pixels_by_size[teacher.image_size] = teacher.pixels_from_pil(images)  # [B, 3, S, S]
        image_emb = teacher.encode_image(pixels_by_size[teacher.image_size])  # [B, D_k]
        text_emb = teacher.encode_text(captions)  # [B, D_k]
        total += (image_emb * text_emb).sum(dim=-1).double()
    return (total / len(teachers)).clamp(-1.0, 1.0).numpy()


def select_by_clip_score(scores: np.ndarray, uids: Sequence[str], cfg: ClipScoreFilterConfig) -> np.ndarray:
    """Boolean keep-mask over ``scores`` (the basic filter's survivors) for the configured mode.

    ``top_fraction`` keeps ceil(fraction * n) samples, best first; ties are broken by uid so
    the choice does not depend on the order samples were read in.
    """
    n = len(scores)
    if cfg.mode == "none":
        return np.ones(n, dtype=bool)
    if cfg.mode == "threshold":
        return scores >= cfg.threshold
    keep_count = math.ceil(cfg.top_fraction * n - 1e-9)
    order = np.lexsort((np.asarray(uids, dtype=str), -scores))  # the last key sorts first
    keep = np.zeros(n, dtype=bool)
    keep[order[:keep_count]] = True
    return keep
