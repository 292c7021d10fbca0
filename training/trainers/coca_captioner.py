"""Training a CoCa captioner from scratch on the teacher corpus with open_clip's ``CoCaLoss``.

The caption loss is computed over the corpus vocabulary only: projection columns of tokens the
corpus never uses are zeroed at the start and never trained, so each has logit exactly 0 and
they enter the softmax as one lumped term ``log(count)``. That is the exact full-vocabulary
cross-entropy of the saved model at a fraction of the cost (the full 49408-way projection of
every position costs ~16 s per step on two CPU cores), and ``training.models.coca_sampling``
exploits the same zero columns when it samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.loss import CoCaLoss
from torch import nn

from clipforge.config import BootstrapTrainConfig
from clipforge.progress import Progress, no_progress
from clipforge.stage_api import Tracker
from training.data.teacher_corpus import Corpus
from training.models import coca_sampling
from training.models.open_clip_models import fresh_model
from training.trainers.attribute_pretraining import check_known, fact_targets, facts_loss, zero_head
from training.trainers.corpus_loop import CorpusTrainResult, check_image_size, tokenize, train_loop

# open_clip's CoCa defaults (--coca-caption-loss-weight 2, --coca-contrastive-loss-weight 1).
COCA_CAPTION_WEIGHT = 2.0
COCA_CONTRASTIVE_WEIGHT = 1.0


@dataclass
class CaptionVocab:
    """The vocabulary the caption loss computes explicitly; every other token is lumped.

    Column 0 of the restricted logits is the lump (all zero-projection tokens, logit 0 each,
    so ``log(count)`` together); it doubles as the ignored label of padding positions.
    """

    ids: torch.Tensor  # [C] vocabulary ids with a trained projection column
    column: torch.Tensor  # [V] vocabulary id -> column (1..C), 0 for lumped/padding
    vocab_size: int

    @classmethod
    def from_tokens(cls, tokens: torch.Tensor, vocab_size: int, pad_id: int = 0) -> CaptionVocab:
        ids = torch.unique(tokens)
        ids = ids[ids != pad_id]
        column = torch.zeros(vocab_size, dtype=torch.long)
        column[ids] = torch.arange(1, len(ids) + 1)
        return cls(ids, column, vocab_size)

    @property
    def num_lumped(self) -> int:
        return self.vocab_size - len(self.ids)

    def restricted_logits(self, hidden: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        """hidden [B, L, W], projection [W, V] -> [B, L, 1 + C]: the lump, then the explicit columns."""
        explicit = hidden @ projection[:, self.ids]
        lump = torch.full_like(explicit[..., :1], math.log(self.num_lumped))
        return torch.cat([lump, explicit], dim=-1)


def coca_losses(
    model: nn.Module, pixels: torch.Tensor, tokens: torch.Tensor, vocab: CaptionVocab, loss_fn: CoCaLoss
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(contrastive, caption) losses of open_clip's ``CoCaLoss`` with the lumped vocabulary, and
    the image tower's pooled output [B, D] before normalisation (what the facts head reads).

    Same teacher forcing as ``CoCa.forward``: the decoder reads tokens[:, :-1] and predicts
    tokens[:, 1:]; padding labels map to column 0, ``CoCaLoss``'s ignore index.
    """
    pooled, image_embs = model.visual(pixels)  # CoCa._encode_image, keeping the unnormalised pool
    text_latent, token_embs = model._encode_text(tokens)
    hidden = coca_sampling.decoder_hidden(model.text_decoder, image_embs, token_embs[:, :-1])
    logits = vocab.restricted_logits(hidden, model.text_decoder.text_projection)
    labels = vocab.column[tokens[:, 1:]]
    contrastive, caption = loss_fn(F.normalize(pooled, dim=-1), text_latent, logits, labels, model.logit_scale.exp())
    return contrastive, caption, pooled


def train_coca(
    model_name: str,
    corpus: Corpus,
    train_idx: torch.Tensor,
    cfg: BootstrapTrainConfig,
    facts: Mapping[str, float],
    facts_weight: float,
    *,
    label: str = "captioner",
    tracker: Tracker | None = None,
    progress: Progress = no_progress,
) -> tuple[CorpusTrainResult, CaptionVocab]:
    """Train an open_clip CoCa from scratch with ``CoCaLoss`` (caption + contrastive terms).

    ``facts`` (KEY.json key -> weight, empty for none) adds ``facts_weight`` x the teachers'
    scene-facts cross-entropy (``training.trainers.attribute_pretraining``) of a linear head on
    the image tower's pooled output: the caption loss alone leaves the ViT naming the
    background's colour, the facts tell it which colour is the object's (measured in params.yaml's
    comment). The head is dropped after training, so the saved folder is open_clip's CoCa.
    """
    check_image_size(model_name, cfg)
    torch.manual_seed(cfg.seed)
    model = fresh_model(model_name)
    coca_sampling.check_coca(model)
    tokens = tokenize(model_name, corpus.captions)
    projection = model.text_decoder.text_projection
    vocab = CaptionVocab.from_tokens(tokens, projection.shape[1], pad_id=int(getattr(model, "pad_id", 0)))
    with torch.no_grad():
        # open_clip leaves the decoder's projection as torch.empty (its init_parameters is
        # never called): initialise the trained columns like the text tower's projection.
        # Untrained columns are exactly zero from here on (no gradient reaches them and
        # decoupled weight decay keeps zero at zero): each such token has logit 0.
        keep = torch.zeros(projection.shape[1], dtype=torch.bool)
        keep[vocab.ids] = True
        projection.normal_(0.0, projection.shape[0] ** -0.5)
        projection[:, ~keep] = 0.0
    loss_fn = CoCaLoss(caption_loss_weight=COCA_CAPTION_WEIGHT, clip_loss_weight=COCA_CONTRASTIVE_WEIGHT)
    targets = fact_targets(corpus.attributes, train_idx, facts) if facts else None
    if targets is not None:
        check_known(targets, f"{label}: captioner_model.facts")
        # Attached to the model only while it trains: train_loop optimises the model's parameters.
        model.add_module("facts_head", zero_head(model.visual.output_dim, targets))

    def step_loss(pixels: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        # The full caption of each image (KEY.txt's first line): what the captioner should say.
        contrastive, caption, pooled = coca_losses(model, pixels, tokens[idx], vocab, loss_fn)
        parts = {"contrastive_loss": float(contrastive.detach()), "caption_loss": float(caption.detach())}
        loss = contrastive + caption
        if targets is not None:
            fact_loss, accuracy = facts_loss(model.facts_head(pooled), targets.labels[idx], targets)
            loss = loss + facts_weight * fact_loss
            parts.update(facts_loss=float(fact_loss.detach()), facts_accuracy=accuracy)
        return loss, parts

    result = train_loop(model, step_loss, corpus, train_idx, cfg, label=label, tracker=tracker, progress=progress)
    if targets is not None:
        del result.model.facts_head
    return result, vocab
