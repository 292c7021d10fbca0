"""Training a CLIP teacher on the toy corpus."""

from __future__ import annotations

import math
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


def test_negclip_loss_is_clip_loss_plus_the_negatives_share() -> None:
    from open_clip.loss import ClipLoss

    from training.trainers.clip_teacher import negclip_loss

    gen = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    scale = torch.tensor(10.0)
    clip = ClipLoss()(images, texts, scale)
    # Negatives identical to the captions double every image->text denominator: + log 2 on
    # that side, half of it on the symmetric mean; text->image is untouched.
    assert negclip_loss(images, torch.cat([texts, texts]), scale) == pytest.approx(float(clip) + math.log(2) / 2)
    # A negative on top of its image (cosine 1) is the hardest there is: a higher loss.
    assert negclip_loss(images, torch.cat([texts, images]), scale) > float(clip) + math.log(2) / 2


def test_training_reads_hard_negatives_line_for_line(tmp_path: Path) -> None:
    root = write_corpus(tmp_path / "c", n=16, negatives=True)
    corpus = read_corpus(root / TEACHER_SHARDS_DIR, 96)
    assert len(corpus.negatives) == 16 and corpus.negatives_missing == 0
    assert all(len(n) == len(lines) for n, lines in zip(corpus.negatives, corpus.caption_lines, strict=True))
    cfg = with_changes(default_params().teacher_models.bootstrap, steps=3, batch_size=8, warmup_steps=1, image_size=64)
    result = train_clip("cf-tiny-rn-teacher", corpus, torch.arange(len(corpus)), cfg, label="neg")
    # 8 images against 16 texts: a loss near log(16) at the start, not log(8).
    assert result.history["loss"].iloc[0] > math.log(8) + 0.2
