"""Stage ``reparameterized_model``: fold train-time branches into single convolutions.

MobileOne blocks, RepMixers, large-kernel convs and conditional positional encodings (and
the Text-RepMixer of the MobileCLIP text encoder) train with parallel conv/BatchNorm branches
that collapse into one convolution for inference (METHOD.md 2.8). Folding reads BatchNorm
*running* statistics, so it is only correct in eval mode; it runs on a copy and is checked
by comparing the folded model's embeddings with the unfolded model's.

The walk is timm's ``reparameterize_model`` (every child with ``fuse()``, ``reparameterize()``
or ``switch_to_deploy()``), the same one ``training.students.load_student`` replays to rebuild
the folded structure, so a saved folded model always reloads into the same module tree.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass

import pandas as pd
import torch
from timm.utils import reparameterize_model
from torch import nn

from clipforge.stage_api import StageContext, StageOutcome
from training.students import StudentClip, load_student, save_student

FOLD_HOOKS = ("fuse", "reparameterize", "switch_to_deploy")
# Attributes that say whether a block is folded: timm's MobileOne/RepMixer/RepCPE/large-kernel
# blocks set ``reparam_conv``; others flip a boolean. A new foldable block (Text-RepMixer)
# should follow one of these conventions so a leftover unfolded block is detectable.
_FOLDED_FLAGS = ("inference_mode", "infer_mode", "is_fused", "deploy")

# Fixed captions for the text-tower comparison (real tokenised text exercises EOT pooling).
CHECK_CAPTIONS = (
    "a photo of a red car parked on the street",
    "two dogs playing in the snow",
    "a bowl of fresh fruit on a wooden table",
    "blue",
)


@dataclass(frozen=True)
class FoldedModule:
    name: str  # qualified module name in the unfolded model
    type_name: str


def _has_fold_hook(module: nn.Module) -> bool:
    return any(callable(getattr(module, hook, None)) for hook in FOLD_HOOKS)


def fold_state(module: nn.Module) -> str | None:
    """``None`` (not foldable), ``"folded"``, ``"unfolded"`` or ``"unknown"`` (no marker to read)."""
    if not _has_fold_hook(module):
        return None
    if hasattr(module, "reparam_conv"):
        return "folded" if module.reparam_conv is not None else "unfolded"
    for flag in _FOLDED_FLAGS:
        value = getattr(module, flag, None)
        if isinstance(value, bool):
            return "folded" if value else "unfolded"
    return "unknown"


def pending_folds(model: nn.Module) -> list[str]:
    """Qualified names of blocks that still carry train-time branches (known markers only)."""
    return [name for name, module in model.named_modules() if fold_state(module) == "unfolded"]


def _modules_in_train_mode(model: nn.Module) -> list[str]:
    return [name or "<root>" for name, module in model.named_modules() if module.training]


def fold_with_report(model: nn.Module) -> tuple[nn.Module, list[FoldedModule]]:
    """Fold a copy of an eval-mode model; also return every block that was folded."""
    in_train = _modules_in_train_mode(model)
    if in_train:
        raise ValueError(
            "refusing to reparameterize a model in train mode: folding uses BatchNorm running "
            "statistics, and a train-mode model normalises with batch statistics, so the folded "
            f"model would not match it (the classic mistake). Call model.eval() first; modules in "
            f"train mode: {', '.join(in_train[:5])}{' ...' if len(in_train) > 5 else ''}"
        )
    # Blocks whose marker says "unfolded" and blocks without a readable marker are what the
    # walk folds (nested ones included: a RepMixer folds its two MobileOne blocks with it).
    candidates = [
        FoldedModule(name or "<root>", type(module).__name__)
        for name, module in model.named_modules()
        if fold_state(module) in ("unfolded", "unknown")
    ]
    folded = copy.deepcopy(model)
    if candidates:
        # timm walks children only; a holder makes a bare foldable block (the root) fold too,
        # and for a StudentClip (no hook on the root) the walk is exactly load_student's.
        holder = nn.Sequential(folded)
        reparameterize_model(holder, inplace=True)
        folded = holder[0]
    left = pending_folds(folded)
    if left:
        raise RuntimeError(f"blocks still carry train-time branches after folding: {', '.join(left[:5])}")
    return folded.eval(), candidates


def reparameterize(model: nn.Module) -> tuple[nn.Module, dict[str, int]]:
    """Folded copy of an eval-mode model and the count of folded blocks by type.

    A model without train-time branches comes back as an unchanged copy with ``{}`` counts.
    Raises ValueError for a model (or any submodule) in train mode.
    """
    folded, blocks = fold_with_report(model)
    return folded, dict(Counter(block.type_name for block in blocks))


def tower_of(module_name: str) -> str:
    """``image`` for modules under an open_clip ``visual`` tower, ``text`` for the rest."""
    return "image" if "visual" in module_name.split(".") else "text"


def check_inputs(model: StudentClip, num_images: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pixels [N, 3, S, S] in [0, 1] and tokenised CHECK_CAPTIONS [C, context_length]."""
    size = model.info.image_size
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(num_images, 3, size, size, generator=generator)
    tokens = model.tokenizer()(list(CHECK_CAPTIONS))
    return pixels, tokens


@torch.no_grad()
def embed(model: StudentClip, pixels: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per tower: normalised embeddings, image [N, D] and text [C, D]."""
    return {"image": model.encode_image(pixels), "text": model.encode_text(tokens)}


def max_abs_diff(reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per tower: largest absolute difference between two sets of embeddings."""
    return {tower: float((reference[tower] - other[tower]).abs().max()) for tower in reference}


def run(ctx: StageContext) -> StageOutcome:
    atol = ctx.params.reparameterized_model.atol
    source = ctx.inputs["student_model"] / "model"
    model = load_student(source).eval()

    started = time.perf_counter()
    folded, blocks = fold_with_report(model)
    fold_seconds = time.perf_counter() - started

    out_model = ctx.out_dir / "model"
    save_student(folded, out_model, reparameterized=True)
    # The published folder must reload into the folded structure with the same outputs.
    reloaded = load_student(out_model)

    pixels, tokens = check_inputs(model)
    reference = embed(model, pixels, tokens)
    diff_folded = max_abs_diff(reference, embed(folded, pixels, tokens))
    diff_reloaded = max_abs_diff(reference, embed(reloaded, pixels, tokens))

    per_tower = Counter(tower_of(block.name) for block in blocks)
    rows = [
        {
            "tower": tower,
            "folded_modules": int(per_tower.get(tower, 0)),
            "max_abs_diff": max(diff_folded[tower], diff_reloaded[tower]),
            "folded_vs_unfolded": diff_folded[tower],
            "reloaded_vs_unfolded": diff_reloaded[tower],
        }
        for tower in ("image", "text")
    ]
    type_counts = dict(Counter(block.type_name for block in blocks))
    params_before = sum(p.numel() for p in model.parameters())
    params_after = sum(p.numel() for p in reloaded.parameters())
    summary = {
        "variant": model.info.variant,
        "pass_through": not blocks,
        "note": (
            "no train-time branches: the model passes through unchanged"
            if not blocks
            else f"folded {len(blocks)} train-time blocks"
        ),
        "folded_by_type": type_counts,
        "folded_by_tower": {tower: int(per_tower.get(tower, 0)) for tower in ("image", "text")},
        "atol": atol,
        "max_abs_diff": {row["tower"]: row["max_abs_diff"] for row in rows},
        "within_atol": all(row["max_abs_diff"] <= atol for row in rows),
        "params_before": params_before,
        "params_after": params_after,
        "check_inputs": {"images": int(pixels.shape[0]), "captions": len(CHECK_CAPTIONS)},
        "fold_seconds": round(fold_seconds, 3),
        "source": str(source),
    }
    metrics = {
        "folded_modules": float(len(blocks)),
        "max_abs_diff_image": rows[0]["max_abs_diff"],
        "max_abs_diff_text": rows[1]["max_abs_diff"],
        "fold_seconds": fold_seconds,
    }
    return StageOutcome(manifest=pd.DataFrame(rows), summary=summary, metrics=metrics)
