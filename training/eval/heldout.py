"""Did a bootstrapped model learn the scenes? Retrieval and caption overlap on held-out samples."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from training.data.teacher_corpus import Corpus, resize_full
from training.models.open_clip_models import LoadedClip


def retrieval_top1(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: Sequence[str]) -> tuple[float, float]:
    """(image->text, text->image) top-1 among N pairs; [N, D] normalised embeddings each.

    A retrieved caption counts as right when its text equals the true caption, so duplicate
    captions in the held-out set are not counted as misses.
    """
    sims = image_emb @ text_emb.T  # [N images, N texts]
    caps = np.asarray(captions, dtype=object)
    i2t = float(np.mean(caps[sims.argmax(dim=1).numpy()] == caps))
    t2i = float(np.mean(caps[sims.argmax(dim=0).numpy()] == caps))
    return i2t, t2i


def heldout_retrieval(loaded: LoadedClip, corpus: Corpus, held_idx: torch.Tensor) -> dict[str, float]:
    """Held-out retrieval through a reloaded model folder (the path downstream stages use)."""
    pixels = resize_full(corpus.images[held_idx], loaded.image_size)
    captions = [corpus.captions[i] for i in held_idx.tolist()]
    image_emb = torch.cat([loaded.encode_image(chunk) for chunk in pixels.split(256)])
    text_emb = torch.cat([loaded.encode_text(captions[i : i + 256]) for i in range(0, len(captions), 256)])
    i2t, t2i = retrieval_top1(image_emb, text_emb, captions)
    return {"heldout_i2t_top1": i2t, "heldout_t2i_top1": t2i, "heldout_size": float(len(captions))}


def unigram_f1(candidate: str, reference: str) -> float:
    """Word-overlap F1 (multiset) between a generated and a reference caption."""
    cand, ref = Counter(candidate.lower().split()), Counter(reference.lower().split())
    overlap = sum((cand & ref).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(cand.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?\"'()") for w in text.lower().split()]


def _singular(word: str, shapes: set[str]) -> str | None:
    """``word`` as one of ``shapes`` ("crosses" -> "cross", "stars" -> "star"), else None."""
    for candidate in (word, word[:-1] if word.endswith("s") else "", word[:-2] if word.endswith("es") else ""):
        if candidate in shapes:
            return candidate
    return None


def main_object(caption: str, shapes: set[str], colors: set[str]) -> tuple[str | None, str | None]:
    """(shape, colour) of the first object a caption names: its first shape word and the colour
    word among the three words before it (a size or count word may sit between)."""
    words = _words(caption)
    for i, word in enumerate(words):
        shape = _singular(word, shapes)
        if shape is not None:
            color = next((w for w in reversed(words[max(0, i - 3) : i]) if w in colors), None)
            return shape, color
    return None, None


def names_main_object(truth: dict[str, Any] | None) -> bool:
    """Whether a KEY.json carries what :func:`caption_attribute_accuracy` scores against."""
    main = truth.get("main") if truth else None
    return isinstance(main, dict) and isinstance(main.get("shape"), str) and isinstance(main.get("color"), str)


def caption_attribute_accuracy(captions: Sequence[str], truths: Sequence[dict[str, Any]]) -> dict[str, float]:
    """How often generated captions name the main object's shape, its colour, and both right.

    ``truths`` are the scenes' ground truth (KEY.json: ``main.shape``, ``main.color``); the
    vocabulary is every shape and colour they hold, so a caption naming a wrong one counts.
    """
    if len(captions) != len(truths) or not captions:
        raise ValueError("need one ground truth per caption and at least one caption")
    shapes = {t["main"]["shape"] for t in truths}
    colors = {t["main"]["color"] for t in truths} | {t["background"] for t in truths if "background" in t}
    hits = np.array(
        [
            (shape == t["main"]["shape"], color == t["main"]["color"])
            for (shape, color), t in (
                (main_object(c, shapes, colors), t) for c, t in zip(captions, truths, strict=True)
            )
        ]
    )
    return {
        "caption_shape_accuracy": float(hits[:, 0].mean()),
        "caption_color_accuracy": float(hits[:, 1].mean()),
        "caption_shape_and_color_accuracy": float(hits.all(axis=1).mean()),
    }
