"""The CoCa trainer: its restricted-vocabulary caption loss is the full-vocabulary loss; its facts head."""

from __future__ import annotations

import math
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.loss import CoCaLoss

from tests.conftest import default_params, with_changes
from tests.training.corpus_helpers import write_corpus
from training import captioner_model
from training.data.embedded_layout import TEACHER_SHARDS_DIR
from training.data.teacher_corpus import read_corpus
from training.trainers.coca_captioner import CaptionVocab, coca_losses, train_coca


def test_restricted_caption_loss_equals_full_vocabulary_loss() -> None:
    torch.manual_seed(0)
    model = open_clip.create_model(captioner_model.BOOTSTRAP_CAPTIONER)
    tokens = open_clip.get_tokenizer(captioner_model.BOOTSTRAP_CAPTIONER)(
        ["a red square", "two blue circles on the left"]
    )
    proj = model.text_decoder.text_projection
    vocab = CaptionVocab.from_tokens(tokens, proj.shape[1])
    with torch.no_grad():
        proj.normal_(0, 0.1)
        mask = torch.ones(proj.shape[1], dtype=torch.bool)
        mask[vocab.ids] = False
        proj[:, mask] = 0.0
    pixels = torch.randn(2, 3, 64, 64)
    loss_fn = CoCaLoss(caption_loss_weight=2.0, clip_loss_weight=1.0)
    with torch.no_grad():
        contrastive, caption, _ = coca_losses(model, pixels, tokens, vocab, loss_fn)
        out = model(pixels, tokens)  # open_clip's own forward: full 49408-way logits
        ref_contrastive, ref_caption = loss_fn(
            out["image_features"], out["text_features"], out["logits"], out["labels"], out["logit_scale"]
        )
    assert float(caption) == pytest.approx(float(ref_caption), rel=1e-5)
    assert float(contrastive) == pytest.approx(float(ref_contrastive), rel=1e-5)
    assert float(caption) > 1.0  # untrained: near-uniform over the vocabulary, not trivially 0


def test_facts_head_trains_the_image_tower_beside_the_coca_losses_and_leaves_no_trace(tmp_path: Path) -> None:
    corpus = read_corpus(write_corpus(tmp_path / "c", n=32) / TEACHER_SHARDS_DIR, 96)
    cfg = with_changes(default_params().captioner_model.bootstrap, steps=6, batch_size=16, warmup_steps=1)
    name, train_idx = captioner_model.BOOTSTRAP_CAPTIONER, torch.arange(len(corpus))
    with_facts, _ = train_coca(name, corpus, train_idx, cfg, {"main.color": 1.0, "main.shape": 0.5}, 1.0)
    plain, _ = train_coca(name, corpus, train_idx, cfg, {}, 1.0)
    hist = with_facts.history
    # The zero-initialised head starts uniform: log(4 colours) + 0.5 log(2 shapes).
    assert hist["facts_loss"].iloc[0] == pytest.approx(math.log(4) + 0.5 * math.log(2), rel=1e-5)
    assert "facts_loss" not in plain.history.columns
    # Same seed, same batches: the first step's CoCa losses agree, the image towers then differ.
    assert hist["caption_loss"].iloc[0] == pytest.approx(plain.history["caption_loss"].iloc[0], rel=1e-6)
    trained, untouched = with_facts.model.visual.state_dict(), plain.model.visual.state_dict()
    assert any(not torch.equal(trained[k], untouched[k]) for k in trained)
    # The head is training-only: the model is open_clip's CoCa again.
    assert with_facts.model.state_dict().keys() == open_clip.create_model(name).state_dict().keys()


def test_facts_the_corpus_lacks_are_a_clear_error(tmp_path: Path) -> None:
    corpus = read_corpus(write_corpus(tmp_path / "c", n=8) / TEACHER_SHARDS_DIR, 96)
    cfg = with_changes(default_params().captioner_model.bootstrap, steps=1, batch_size=4)
    with pytest.raises(ValueError, match=r"captioner_model.facts \['main.weight'\]"):
        train_coca(captioner_model.BOOTSTRAP_CAPTIONER, corpus, torch.arange(8), cfg, {"main.weight": 1.0}, 1.0)
