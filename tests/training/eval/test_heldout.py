"""Held-out checks of bootstrapped models."""

from __future__ import annotations

import pytest
import torch

from training.eval.heldout import caption_attribute_accuracy, retrieval_top1


def test_retrieval_top1_counts_duplicate_captions_as_hits() -> None:
    emb = torch.eye(3)
    assert retrieval_top1(emb, emb, ["a", "b", "c"]) == (1.0, 1.0)
    swapped = emb[[1, 0, 2]]
    assert retrieval_top1(emb, swapped, ["a", "b", "c"]) == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert retrieval_top1(emb, swapped, ["a", "a", "c"]) == (1.0, 1.0)


def _truth(shape: str, color: str, background: str) -> dict:
    return {"main": {"shape": shape, "color": color}, "background": background}


def test_caption_attribute_accuracy_reads_the_first_object() -> None:
    truths = [
        _truth("circle", "red", "green"),
        _truth("cross", "blue", "white"),
        _truth("star", "yellow", "black"),
        _truth("heart", "red", "blue"),
    ]
    captions = [
        "a striped green background with two large red circles",  # background first: still right
        "three small blue crosses on the left, on a white background",  # plural "crosses"
        "a black star on a dotted yellow background",  # the background's colour named: wrong colour
        "a picture of shapes",  # no shape named
    ]
    accuracy = caption_attribute_accuracy(captions, truths)
    assert accuracy == {
        "caption_shape_accuracy": 0.75,
        "caption_color_accuracy": 0.5,
        "caption_shape_and_color_accuracy": 0.5,
    }
    with pytest.raises(ValueError, match="one ground truth per caption"):
        caption_attribute_accuracy(captions[:2], truths)
