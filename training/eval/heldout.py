"""Did a bootstrapped model learn the scenes? Retrieval and caption overlap on held-out samples."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

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
