"""Supervised pretraining of a teacher's image trunk on the scene facts of the corpus' KEY.json.

Real CLIP teachers start from image towers that already see objects; a bootstrapped one that
learns pixels and words at once from 6000 captions learns the background (what tells most
pairs of a batch apart) and never the object's shape (docs/stages.md). So the trunk first
learns to name every fact of the scene the generator recorded (a multi-label head over
"main.shape=star", "object.color=red", "texture=striped", ...), the head is dropped, and the
text tower is then tuned against the locked trunk (LiT, Zhai et al. 2022;
``training.trainers.clip_teacher.train_lit``).

Facts are read generically from whatever KEY.json holds (nested groups and scalars), so a
corpus with other attributes works unchanged; samples without KEY.json have no targets and
are left out of this phase.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from clipforge.config import ImagePretrainingConfig
from clipforge.progress import Progress, no_progress
from training.data.teacher_corpus import Corpus, random_resized_crop
from training.optim import adamw, cosine_lr, set_lr

# KEY.json entries that describe the file, not the scene.
_NOT_FACTS = frozenset({"caption", "width", "height"})
# Groups of objects: their attributes also count as facts of "some object" ("object.shape=star"
# whichever group the star is in), which is what a single-object prompt asks.
_OBJECT_GROUPS = ("main", "extra")


def scene_facts(attributes: dict[str, Any]) -> set[str]:
    """KEY.json -> {"main.shape=star", "object.shape=star", "texture=striped", ...}."""
    facts: set[str] = set()
    for key, value in attributes.items():
        if key in _NOT_FACTS or value is None:
            continue
        if isinstance(value, dict):
            for attr, attr_value in value.items():
                if attr_value is None:
                    continue
                facts.add(f"{key}.{attr}={attr_value}")
                if key in _OBJECT_GROUPS:
                    facts.add(f"object.{attr}={attr_value}")
        elif isinstance(value, str | int | float | bool):
            facts.add(f"{key}={value}")
    return facts


@dataclass(frozen=True)
class FactTargets:
    """Multi-hot targets over the facts the training samples show."""

    vocabulary: list[str]
    targets: torch.Tensor  # [N, V] float 0/1, rows of samples without KEY.json all zero
    has_facts: torch.Tensor  # [N] bool


def fact_targets(attributes: Sequence[dict[str, Any] | None], train_idx: torch.Tensor) -> FactTargets:
    """The vocabulary is what the training samples show, so held-out facts never shape it."""
    facts = [scene_facts(a) if a else set() for a in attributes]
    vocabulary = sorted(set().union(*(facts[i] for i in train_idx.tolist())))
    column = {fact: j for j, fact in enumerate(vocabulary)}
    targets = torch.zeros(len(facts), len(vocabulary))
    for i, sample in enumerate(facts):
        for fact in sample:
            if fact in column:
                targets[i, column[fact]] = 1.0
    return FactTargets(vocabulary, targets, torch.tensor([bool(f) for f in facts], dtype=torch.bool))


def _num_features(trunk: nn.Module, image_size: int) -> int:
    """Width of the trunk's pooled output: timm's attribute, else one probe in eval mode (so
    batch-norm statistics are not moved by the probe)."""
    width = getattr(trunk, "num_features", None)
    if isinstance(width, int):
        return width
    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        width = int(trunk(torch.zeros(1, 3, image_size, image_size)).shape[-1])
    trunk.train(was_training)
    return width


def pretrain_trunk(
    trunk: nn.Module,
    corpus: Corpus,
    train_idx: torch.Tensor,
    cfg: ImagePretrainingConfig,
    *,
    image_size: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    seed: int,
    label: str,
    progress: Progress = no_progress,
) -> pd.DataFrame:
    """Train ``trunk`` (pixels [B, 3, S, S] -> pooled features [B, F]) to predict each scene's facts.

    A linear head over the pooled features, binary cross-entropy per fact summed over facts
    (so each fact weighs as one binary decision), random resized crops as the CLIP phase uses.
    Returns the history (step, lr, loss, facts_accuracy); the head is discarded.
    """
    if cfg.steps == 0:
        return pd.DataFrame(columns=["step", "lr", "loss", "facts_accuracy"])
    facts = fact_targets(corpus.attributes, train_idx)
    usable = train_idx[facts.has_facts[train_idx]]
    if len(usable) < 2 or not facts.vocabulary:
        raise ValueError(
            f"{label}: image_pretraining needs KEY.json scene attributes in the teacher corpus; "
            f"{len(usable)} of {len(train_idx)} training samples have any (set teacher_models."
            "image_pretraining.steps: 0 to train the image tower contrastively instead)"
        )
    gen = torch.Generator().manual_seed(seed)
    # Zero-initialised without nn.Linear's random init: a draw from torch's global generator
    # here would shift another teacher's initialisation running in a parallel thread. (The
    # trunk's first step then has zero gradient; the head's does not.)
    head = nn.utils.skip_init(nn.Linear, _num_features(trunk, image_size), len(facts.vocabulary))
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    both = nn.ModuleDict({"trunk": trunk, "head": head})
    optimizer = adamw(both, cfg.lr, cfg.weight_decay, (0.9, 0.98))
    batch = min(cfg.batch_size, len(usable))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.precision == "bf16" else contextlib.nullcontext()
    rows = []
    both.train()
    for step in progress(range(cfg.steps), f"pretrain {label}", cfg.steps):
        lr = cosine_lr(step, cfg.steps, cfg.warmup_steps, cfg.lr)
        set_lr(optimizer, lr)
        idx = usable[torch.randint(0, len(usable), (batch,), generator=gen)]
        pixels = (random_resized_crop(corpus.images[idx], image_size, gen) - mean) / std
        with autocast:
            logits = head(trunk(pixels)).float()  # [B, V]
        target = facts.targets[idx]
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / batch
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{label}: pretraining loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        accuracy = float(((logits.detach() > 0).float() == target).float().mean())
        rows.append({"step": step, "lr": lr, "loss": float(loss.detach()), "facts_accuracy": accuracy})
    trunk.eval()
    return pd.DataFrame(rows)
