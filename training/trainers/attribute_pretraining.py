"""Supervised pretraining of a teacher's image trunk on the scene facts of the corpus' KEY.json.

Real CLIP teachers start from image towers that already see objects; a bootstrapped one that
learns pixels and words at once from 6000 captions learns the background (what tells most
pairs of a batch apart) and never the object's shape (docs/stages.md). So the trunk first
learns to name the scene facts the generator recorded, one softmax classifier per configured
KEY.json key ("main.shape" -> circle | square | ..., "texture" -> plain | striped | ...), the
heads are dropped, and the text tower is then tuned against the locked trunk (LiT, Zhai et al.
2022; ``training.trainers.clip_teacher.train_lit``).

Why a softmax per key and only some keys: one binary decision per "key=value" fact (86 of them
over all of KEY.json) taught a 0.4M-parameter trunk colour and count but left the shape of a
lone object at chance after 1200 steps; a softmax per key over all twelve keys did no better
(0.25 at 1000 steps, 1.2M-parameter trunk), and over the four keys the captions lean on most
(shape, colour, count, texture) it named the shape 0.575 of the time (validation split, 1000
steps). Easy facts (position, size, background colour) win the small trunk's capacity first,
so each key's cross-entropy has a configured weight: shape and count at 2, size and position at
0.5 gave both validation seeds zero-shot >= 0.76 with shape >= 0.645 (docs/stages.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
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

MISSING = -1  # label of a sample whose KEY.json lacks the key (or holds a value unseen in training)


def scene_value(attributes: dict[str, Any], key: str) -> str | None:
    """The value at a dotted KEY.json path ("main.shape" -> "star"), as text; None when absent."""
    value: Any = attributes
    for part in key.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            return None
        value = value[part]
    return None if isinstance(value, dict | list) else str(value)


@dataclass(frozen=True)
class FactTargets:
    """One categorical label per sample and KEY.json key."""

    keys: list[str]
    weights: list[float]  # per key, its cross-entropy's weight in the loss
    classes: list[list[str]]  # per key, the values the training samples show
    labels: torch.Tensor  # [N, K] long, MISSING where a sample lacks the key
    has_facts: torch.Tensor  # [N] bool: any key known

    def slices(self) -> list[slice]:
        """Where each key's logits lie in the concatenated head output."""
        ends = torch.tensor([len(c) for c in self.classes]).cumsum(0).tolist()
        return [slice(end - len(c), end) for end, c in zip(ends, self.classes, strict=True)]


def fact_targets(
    attributes: Sequence[dict[str, Any] | None], train_idx: torch.Tensor, weights: Mapping[str, float]
) -> FactTargets:
    """Targets for the KEY.json keys of ``weights`` (key -> loss weight). The classes are what the
    training samples show, so held-out values never shape them."""
    keys = list(weights)
    values = [[scene_value(a, k) if a else None for k in keys] for a in attributes]  # [N][K]
    train = train_idx.tolist()
    classes = [sorted({values[i][j] for i in train} - {None}) for j in range(len(keys))]  # type: ignore[type-var]
    index = [{v: c for c, v in enumerate(cls)} for cls in classes]
    labels = torch.tensor(
        [[index[j].get(v, MISSING) if v is not None else MISSING for j, v in enumerate(row)] for row in values],
        dtype=torch.long,
    ).reshape(len(values), len(keys))
    return FactTargets(keys, [float(weights[k]) for k in keys], classes, labels, (labels != MISSING).any(dim=1))


def check_known(targets: FactTargets, setting: str) -> None:
    """A clear error when a configured key names no value of any training sample (``setting``
    names the config key in the message)."""
    absent = [k for k, c in zip(targets.keys, targets.classes, strict=True) if not c]
    if absent:
        raise ValueError(f"{setting} {absent} name no KEY.json value of any training sample")


def zero_head(in_features: int, targets: FactTargets) -> nn.Linear:
    """The facts head: [B, in_features] -> [B, sum of classes], zero so it starts uniform.

    Without nn.Linear's random init: a draw from torch's global generator here would shift
    another teacher's initialisation running in a parallel thread, and every later draw of the
    run. The trunk's first step then has zero gradient; the head's does not.
    """
    head = nn.utils.skip_init(nn.Linear, in_features, sum(len(c) for c in targets.classes))
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def facts_loss(logits: torch.Tensor, labels: torch.Tensor, targets: FactTargets) -> tuple[torch.Tensor, float]:
    """Weighted sum over keys of the mean cross-entropy of the samples that have the key; and the mean
    top-1 accuracy over (sample, key) pairs with a label. logits [B, sum classes], labels [B, K]."""
    loss = logits.new_zeros(())
    correct = known = 0
    for k, part in enumerate(targets.slices()):
        label = labels[:, k]
        has = label != MISSING
        if not has.any():
            continue
        loss = loss + targets.weights[k] * F.cross_entropy(logits[has, part], label[has])
        correct += int((logits[has, part].argmax(1) == label[has]).sum())
        known += int(has.sum())
    return loss, correct / max(known, 1)


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

    A linear head over the pooled features with one softmax per ``cfg.facts`` key, the keys'
    cross-entropies summed with their weights, random resized crops as the CLIP phase uses. Returns the history
    (step, lr, loss, facts_accuracy); the head is discarded.
    """
    if cfg.steps == 0:
        return pd.DataFrame(columns=["step", "lr", "loss", "facts_accuracy"])
    facts = fact_targets(corpus.attributes, train_idx, cfg.facts)
    usable = train_idx[facts.has_facts[train_idx]]
    if len(usable) < 2:
        raise ValueError(
            f"{label}: image_pretraining needs KEY.json scene attributes in the teacher corpus; "
            f"{len(usable)} of {len(train_idx)} training samples have any of {list(cfg.facts)} (set "
            "teacher_models.image_pretraining.steps: 0 to train the image tower contrastively instead)"
        )
    check_known(facts, f"{label}: image_pretraining.facts")
    gen = torch.Generator().manual_seed(seed)
    head = zero_head(_num_features(trunk, image_size), facts)
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
            logits = head(trunk(pixels)).float()  # [B, sum of classes]
        loss, accuracy = facts_loss(logits, facts.labels[idx], facts)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{label}: pretraining loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        rows.append({"step": step, "lr": lr, "loss": float(loss.detach()), "facts_accuracy": accuracy})
    trunk.eval()
    return pd.DataFrame(rows)
