"""The CoCa trainer's restricted-vocabulary caption loss is the full-vocabulary loss."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.loss import CoCaLoss

from training import captioner_model
from training.trainers.coca_captioner import CaptionVocab, coca_losses


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
        contrastive, caption = coca_losses(model, pixels, tokens, vocab, loss_fn)
        out = model(pixels, tokens)  # open_clip's own forward: full 49408-way logits
        ref_contrastive, ref_caption = loss_fn(
            out["image_features"], out["text_features"], out["logits"], out["labels"], out["logit_scale"]
        )
    assert float(caption) == pytest.approx(float(ref_caption), rel=1e-5)
    assert float(contrastive) == pytest.approx(float(ref_contrastive), rel=1e-5)
    assert float(caption) > 1.0  # untrained: near-uniform over the vocabulary, not trivially 0
