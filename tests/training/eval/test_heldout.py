"""Held-out checks of bootstrapped models."""

from __future__ import annotations

import pytest
import torch

from training.eval.heldout import retrieval_top1


def test_retrieval_top1_counts_duplicate_captions_as_hits() -> None:
    emb = torch.eye(3)
    assert retrieval_top1(emb, emb, ["a", "b", "c"]) == (1.0, 1.0)
    swapped = emb[[1, 0, 2]]
    assert retrieval_top1(emb, swapped, ["a", "b", "c"]) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert retrieval_top1(emb, swapped, ["a", "a", "c"]) == (1.0, 1.0)
