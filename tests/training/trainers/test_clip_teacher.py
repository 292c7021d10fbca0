"""Training a CLIP teacher on the toy corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import default_params, with_changes
from tests.training.corpus_helpers import write_corpus
from training.data.embedded_layout import TEACHER_SHARDS_DIR
from training.data.teacher_corpus import read_corpus
from training.trainers.clip_teacher import train_clip


def test_clip_training_learns_the_toy_corpus(tmp_path: Path) -> None:
    corpus = read_corpus(write_corpus(tmp_path / "c", n=64) / TEACHER_SHARDS_DIR, 96)
    cfg = with_changes(
        default_params().teacher_models.bootstrap, steps=30, batch_size=16, lr=2e-3, warmup_steps=3, image_size=64
    )
    result = train_clip("cf-tiny-rn-teacher", corpus, torch.arange(len(corpus)), cfg, label="rn")
    hist = result.history
    assert list(hist.columns[:4]) == ["step", "lr", "loss", "logit_scale"] and len(hist) == 30
    assert hist["loss"].tail(5).mean() < 0.6 * hist["loss"].head(3).mean()


def test_bootstrap_image_size_must_match_config(tmp_path: Path) -> None:
    corpus = read_corpus(write_corpus(tmp_path / "c", n=8) / TEACHER_SHARDS_DIR, 48)
    cfg = with_changes(default_params().teacher_models.bootstrap, steps=1, batch_size=4, image_size=32)
    with pytest.raises(ValueError, match="image_size=32"):
        train_clip("cf-tiny-rn-teacher", corpus, torch.arange(8), cfg, label="x")
