"""Folding train-time branches into single convolutions, and checking that nothing moved.

MobileOne blocks, RepMixers, large-kernel convs and conditional positional encodings (and
the Text-RepMixer of the MobileCLIP text encoder) train with parallel conv/BatchNorm branches
that collapse into one convolution for inference (docs/method.md §2.8). Folding reads BatchNorm
*running* statistics, so it is only correct in eval mode; it runs on a copy and is checked
by comparing the folded model's embeddings with the unfolded model's.

The walk is timm's ``reparameterize_model`` (every child with ``fuse()``, ``reparameterize()``
or ``switch_to_deploy()``), the same one ``training.models.students.load_student`` replays to
rebuild the folded structure, so a saved folded model always reloads into the same module tree.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
from timm.utils import reparameterize_model
from torch import nn

from export.parity import centred_cosines
from training.models.students import TOWERS, StudentClip

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


def _holds_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(sub, nn.modules.batchnorm._BatchNorm) for sub in module.modules())


def pending_folds(model: nn.Module) -> list[str]:
    """Qualified names of foldable blocks that still carry train-time branches.

    A foldable block is one with a fold hook: timm's MobileOneBlock, ReparamLargeKernelConv,
    RepMixer and RepConditionalPosEnc, clipforge's TextRepMixer and ConvFFN (the two halves of
    a TextRepMixerBlock). It is pending when its marker says unfolded, or when it still holds
    a BatchNorm: folding removes every BatchNorm inside such a block, so a leftover one means
    a partial fold (or, for a block without a readable marker, no fold at all). Plain conv +
    BatchNorm pairs outside these blocks (timm's ConvMlp, the ViT conv stem) are single-branch
    and not reported.
    """
    return [
        name or "<root>"
        for name, module in model.named_modules()
        if (state := fold_state(module)) == "unfolded" or (state is not None and _holds_batchnorm(module))
    ]


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


def check_inputs(
    model: StudentClip, num_images: int = 4, seed: int = 0, image_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random pixels [N, 3, S, S] in [0, 1] and tokenised CHECK_CAPTIONS [C, context_length].

    ``image_size`` defaults to the student's; the fully convolutional MCi towers also take a
    smaller one, which keeps checks of the large variants cheap.
    """
    size = image_size or model.info.image_size
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


@dataclass(frozen=True)
class FoldReport:
    """What folding a student did, per tower, and how far its embeddings moved."""

    blocks: tuple[FoldedModule, ...]
    max_abs_diff: dict[str, float]  # tower -> max |folded - unfolded| over the check inputs
    # tower -> min batch-centred cosine (export.parity): the input-dependent part matches too.
    # Needed beside max_abs_diff: a random MCi tower embeds all images within ~1e-4 of each other.
    centred_cosine_min: dict[str, float]
    seconds: float  # the fold alone (copy + walk), not the comparison
    # tower -> the unfolded model's embeddings of the check inputs (image [N, D], text [C, D]),
    # kept so a caller comparing a further copy (a reloaded folder) need not embed them again.
    unfolded: dict[str, torch.Tensor] = field(repr=False, compare=False)

    def folded_by_tower(self) -> dict[str, int]:
        counts = Counter(tower_of(block.name) for block in self.blocks)
        return {tower: int(counts.get(tower, 0)) for tower in TOWERS}

    def folded_by_type(self) -> dict[str, int]:
        return dict(Counter(block.type_name for block in self.blocks))

    def notes(self) -> dict[str, str]:
        """Per tower, one line: what was folded, or that the tower passes through unchanged."""
        notes = {}
        for tower, count in self.folded_by_tower().items():
            types = Counter(block.type_name for block in self.blocks if tower_of(block.name) == tower)
            notes[tower] = (
                f"folded {count} train-time blocks ({', '.join(f'{n} {t}' for t, n in sorted(types.items()))})"
                if count
                else "nothing to fold: passes through unchanged"
            )
        return notes

    def as_dict(self) -> dict[str, object]:
        return {
            "folded_modules": len(self.blocks),
            "folded_by_tower": self.folded_by_tower(),
            "folded_by_type": self.folded_by_type(),
            "notes": self.notes(),
            "max_abs_diff": self.max_abs_diff,
            "centred_cosine_min": self.centred_cosine_min,
            "fold_seconds": round(self.seconds, 3),
        }


def fold_student(model: StudentClip, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[StudentClip, FoldReport]:
    """Fold a copy of an eval-mode student and compare its embeddings with the original's.

    ``pixels`` [N, 3, S, S] in [0, 1] and ``tokens`` [C, context_length] are the check inputs
    (``check_inputs``). The original is left as it was. Raises ValueError in train mode and
    RuntimeError when a block keeps its branches; the caller judges the two metrics.
    """
    started = time.perf_counter()
    folded, blocks = fold_with_report(model)
    seconds = time.perf_counter() - started
    reference, result = embed(model, pixels, tokens), embed(folded, pixels, tokens)
    centred = {
        tower: float(np.min(centred_cosines(reference[tower].numpy(), result[tower].numpy()))) for tower in reference
    }
    return folded, FoldReport(tuple(blocks), max_abs_diff(reference, result), centred, seconds, reference)
