"""Learning-rate schedules shared by the bootstrap trainers and the student trainer."""

from __future__ import annotations

import math

import torch


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
