"""Training a CLIP teacher from scratch on the teacher corpus with open_clip's ``ClipLoss``."""

from __future__ import annotations

import torch
from open_clip.loss import ClipLoss

from clipforge.config import BootstrapTrainConfig
from clipforge.progress import Progress, no_progress
from clipforge.stage_api import Tracker
from training.data.teacher_corpus import Corpus
from training.models.open_clip_models import fresh_model
from training.trainers.corpus_loop import CorpusTrainResult, check_image_size, tokenize, train_loop


def train_clip(
    model_name: str,
    corpus: Corpus,
    train_idx: torch.Tensor,
    cfg: BootstrapTrainConfig,
    *,
    label: str,
    tracker: Tracker | None = None,
    progress: Progress = no_progress,
) -> CorpusTrainResult:
    """Train an open_clip CLIP from scratch with ``ClipLoss``."""
    check_image_size(model_name, cfg)
    torch.manual_seed(cfg.seed)
    model = fresh_model(model_name)
    tokens = tokenize(model_name, corpus.captions)
    loss_fn = ClipLoss()

    def step_loss(pixels: torch.Tensor, toks: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        image_features, text_features, scale = model(pixels, toks)[:3]
        return loss_fn(image_features, text_features, scale), {}

    return train_loop(model, step_loss, corpus, tokens, train_idx, cfg, label=label, tracker=tracker, progress=progress)
