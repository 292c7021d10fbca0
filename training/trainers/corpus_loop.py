"""The loop both bootstrap trainers share: AdamW, warmup + cosine, random resized crops of the
in-memory teacher corpus, and a step loss the caller gives.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import open_clip
import pandas as pd
import torch
from torch import nn

from clipforge.config import BootstrapTrainConfig
from clipforge.progress import Progress, no_progress
from clipforge.stage_api import Tracker
from training.data.teacher_corpus import Corpus, random_resized_crop
from training.models.open_clip_models import model_image_size
from training.optim import adamw, clamp_logit_scale_, cosine_lr, set_lr


def pixel_norm(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's mean/std as [1, 3, 1, 1] tensors (the values ``load_model`` will use)."""
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(pre.get("mean", open_clip.OPENAI_DATASET_MEAN), dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.get("std", open_clip.OPENAI_DATASET_STD), dtype=torch.float32).view(1, 3, 1, 1)
    return mean, std


@dataclass
class CorpusTrainResult:
    model: nn.Module
    history: pd.DataFrame  # one row per step: step, lr, loss, logit_scale, (parts)
    seconds: float
    # LiT teachers: the image trunk's supervised phase (step, lr, loss, facts_accuracy).
    pretrain_history: pd.DataFrame | None = None

    @property
    def final_loss(self) -> float:
        # Mean of the last few steps: one batch's loss is noisy.
        tail = self.history["loss"].tail(max(1, min(10, len(self.history) // 10)))
        return float(tail.mean())


def _batches(indices: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled epochs over ``indices``, full batches only (a short corpus repeats)."""
    batch_size = min(batch_size, len(indices))
    while True:
        perm = indices[torch.randperm(len(indices), generator=generator)]
        for start in range(0, len(perm) - batch_size + 1, batch_size):
            yield perm[start : start + batch_size]


# (pixels [B, 3, S, S] normalised, corpus indices [B]) -> (loss, parts): the step loss picks
# its own text for those indices.
StepLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]
# (corpus indices [B], generator) -> what the step loss gets for them, when not random crops
# (a locked image tower's precomputed features, for instance).
BatchInputs = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def train_loop(
    model: nn.Module,
    step_loss: StepLoss,
    corpus: Corpus,
    train_idx: torch.Tensor,
    cfg: BootstrapTrainConfig,
    *,
    label: str,
    tracker: Tracker | None = None,
    progress: Progress = no_progress,
    inputs: BatchInputs | None = None,
) -> CorpusTrainResult:
    """AdamW + warmup/cosine over random resized crops; ``step_loss(pixels, idx)`` -> (loss, parts).

    pixels are [B, 3, image_size, image_size] normalised for the model, idx [B] the corpus
    indices they show; ``inputs`` replaces the crops with other per-sample inputs. Only the
    parameters that require gradients are optimised.
    """
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    mean, std = pixel_norm(model)
    optimizer = adamw(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    batches = _batches(train_idx, cfg.batch_size, gen)
    steps: Iterable[int] = progress(range(cfg.steps), f"train {label}", cfg.steps)
    rows: list[dict[str, float]] = []
    model.train()
    for step in steps:
        lr = cosine_lr(step, cfg.steps, cfg.warmup_steps, cfg.lr)
        set_lr(optimizer, lr)
        idx = next(batches)
        if inputs is None:
            batch = (random_resized_crop(corpus.images[idx], cfg.image_size, gen) - mean) / std
        else:
            batch = inputs(idx, gen)
        loss, parts = step_loss(batch, idx)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{label}: loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # open_clip clamps the learned temperature the same way (docs/method.md §2.7 cap).
        clamp_logit_scale_(model.logit_scale)
        row = {
            "step": step,
            "lr": lr,
            "loss": float(loss.detach()),
            "logit_scale": float(model.logit_scale.detach().exp()),
            **parts,
        }
        rows.append(row)
        if tracker is not None:
            log_history(tracker, label, [row], cfg.log_every, cfg.steps)
    model.eval()
    return CorpusTrainResult(model, pd.DataFrame(rows), time.perf_counter() - started)


def log_history(tracker: Tracker, label: str, rows: Iterable[dict[str, Any]], log_every: int, total_steps: int) -> None:
    """Log the history rows of every ``log_every``-th step and the last one as ``{label}_{column}``.

    The one rule for live logging (train_loop, a row per step) and for logging afterwards
    (teachers trained in threads, where MLflow's active run, a thread-local, is not visible).
    """
    for row in rows:
        step = int(row["step"])
        if step % log_every == 0 or step == total_steps - 1:
            tracker.log_metrics({f"{label}_{k}": float(v) for k, v in row.items() if k != "step"}, step=step)


def check_image_size(model_name: str, cfg: BootstrapTrainConfig) -> None:
    size = model_image_size(model_name)
    if size != cfg.image_size:
        raise ValueError(
            f"bootstrap.image_size={cfg.image_size} but open_clip config {model_name!r} is built for "
            f"{size}x{size} images; change one of them so they agree"
        )


def tokenize(model_name: str, captions: Sequence[str]) -> torch.Tensor:
    return open_clip.get_tokenizer(model_name)(list(captions))
