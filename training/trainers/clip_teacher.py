"""Training a CLIP teacher from scratch on the teacher corpus with open_clip's ``ClipLoss``.

Each step pairs every image with one of its caption lines drawn at random (the full caption or
a partial one, ``Corpus.caption_lines``), so a teacher sees attribute-level text beside full
descriptions; when the corpus has hard negatives (KEY.neg.txt) they join the batch's texts
(:func:`negclip_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
    lines = corpus.caption_lines
    # Every line of every sample tokenised once: [sum of lines, L]; sample i's lines start at first[i].
    tokens = tokenize(model_name, [line for sample in lines for line in sample])
    counts = torch.tensor([len(sample) for sample in lines])
    first = torch.cumsum(counts, 0) - counts
    negatives = None
    if corpus.negatives:
        negatives = tokenize(model_name, [line for sample in corpus.negatives for line in sample])
    line_gen = torch.Generator().manual_seed(cfg.seed + 1)
    loss_fn = ClipLoss()

    def step_loss(pixels: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        pick = first[idx] + (torch.rand(len(idx), generator=line_gen) * counts[idx]).long()  # [B] line rows
        if negatives is None:
            image_features, text_features, scale = model(pixels, tokens[pick])[:3]
            return loss_fn(image_features, text_features, scale), {}
        # One text pass over the captions and their hard negatives: [2B, L].
        image_features, text_features, scale = model(pixels, torch.cat([tokens[pick], negatives[pick]]))[:3]
        return negclip_loss(image_features, text_features, scale), {}

    return train_loop(model, step_loss, corpus, train_idx, cfg, label=label, tracker=tracker, progress=progress)


def negclip_loss(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss with hard negative captions (NegCLIP, Yuksekgonul et al. 2023).

    image_features [B, D], text_features [2B, D]: the B captions, then one hard negative each.
    Image -> text picks among all 2B texts (so each image must prefer its caption to every
    hard negative); text -> image is over the B true captions only, as a negative caption has
    no image. open_clip's ``ClipLoss`` takes square logits only, hence this function.
    """
    b = image_features.shape[0]
    logits = scale * image_features @ text_features.T  # [B, 2B]
    labels = torch.arange(b, device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits[:, :b].T, labels)) / 2
