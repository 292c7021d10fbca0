"""Optimisation rules every trainer shares: parameter groups, the learning-rate schedule, and
the cap on the learnable temperature.

The bootstrap trainers (teachers, captioner) and the student trainer take all three from here,
so a change to any rule reaches every model the pipeline trains.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# A CLIP model stores the log of its temperature s and multiplies cosine similarities by
# s = exp(logit_scale); s is capped at 100, CLIP's cap (docs/method.md §2.7).
MAX_SCALE_MULTIPLIER = 100.0


def cosine_lr(step: int, total: int, warmup: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Linear warmup to ``base_lr`` over ``warmup`` steps, then cosine decay to ``min_lr``.

    ``step`` counts from 0; step ``warmup - 1`` is the first at full ``base_lr`` and step
    ``total - 1`` the last of the decay (it reaches ``min_lr`` at ``step == total``). Steps
    past ``total`` stay at ``min_lr``.
    """
    if total < 1:
        raise ValueError(f"cosine_lr needs total >= 1, got {total}")
    if warmup < 0 or base_lr < 0 or min_lr < 0:
        raise ValueError(f"cosine_lr needs warmup, base_lr, min_lr >= 0, got {warmup}, {base_lr}, {min_lr}")
    if step < warmup:
        return base_lr * (step + 1) / warmup
    decay_steps = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (groups differ only in weight decay here)."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def clamp_logit_scale_(logit_scale: torch.Tensor) -> None:
    """Keep a learnable log-temperature in [0, log MAX_SCALE_MULTIPLIER], in place (after a step)."""
    with torch.no_grad():
        logit_scale.clamp_(0.0, math.log(MAX_SCALE_MULTIPLIER))


def scale_multiplier(logit_scale: torch.Tensor) -> torch.Tensor:
    """The multiplier exp(logit_scale), capped at MAX_SCALE_MULTIPLIER."""
    return logit_scale.exp().clamp(max=MAX_SCALE_MULTIPLIER)


# AdamW's epsilon for every trainer, as open_clip uses for ViT towers: 1e-8 lets rarely-updated
# rows take huge steps.
ADAMW_EPS = 1e-6


def adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """The optimiser every trainer uses: AdamW over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=ADAMW_EPS)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases, norm weights, the logit scale and embeddings.

    Every parameter of rank < 2 is a bias, a norm gain, a class token or the logit scale;
    token and positional embeddings are matrices, so they are excluded by name (timm's and
    CLIP's practice: decaying a lookup table shrinks rows the batch never touched). The one
    rule for every model the pipeline trains: students, bootstrapped teachers and captioner.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "embedding" in name or "logit_scale" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
