"""Parity metrics between a reference model's embeddings and a copy's (folded, ONNX, ...).

Plain per-sample cosine is what an app sees, but it is blind where every input maps to
nearly the same direction: a freshly initialised MCi image tower gives embeddings whose
pairwise cosines exceed 0.99999, so a copy that ignored its input would still score ~1.
The batch-centred cosine removes what the reference embeddings of the batch share (their
mean, subtracted from both sides) and compares what is left: the part that depends on the
input. A copy that is right scores ~1 on both; one that is wrong fails the centred one.
"""

from __future__ import annotations

import numpy as np


def cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per-sample cosine between rows of [N, D] arrays (float64); NaN for a zero row."""
    a, b = reference.astype(np.float64), other.astype(np.float64)
    denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=1) / denominator, np.nan)


def centred_cosines(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per-sample cosine after subtracting the reference batch mean from both [N, D] arrays.

    Needs N >= 2 (one sample centres to zero): returns NaN for every sample otherwise.
    """
    if len(reference) < 2:
        return np.full(len(reference), np.nan)
    mean = reference.astype(np.float64).mean(axis=0, keepdims=True)
    return cosines(reference - mean, other - mean)
