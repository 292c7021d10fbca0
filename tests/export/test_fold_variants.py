"""Every MobileCLIP variant folds back to its train form's outputs, image and text.

Each variant is built with random weights, its BatchNorms and layer scales randomised so
every branch matters, and folded by ``export.reparameterize.fold_student`` (the stage's and
``clipforge export``'s path). MCi towers are fully convolutional up to their pooled head,
so they are checked at 64 px; the ViT-B tower needs its 224 px.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from export.reparameterize import check_inputs, embed, fold_student, pending_folds
from tests.fold_helpers import randomise_branches
from training.models.mobileclip import list_variants, variant_config
from training.models.mobileclip.text_blocks import TextRepMixer
from training.models.students import build_student

ATOL = 1e-4  # Done-when: max abs diff of the normalised embeddings
MIN_CENTRED_COSINE = 0.9999
# Every block type that trains with branches and must fold (docs/method.md §2.8).
MULTI_BRANCH = {
    "MobileOneBlock",
    "RepMixer",
    "ReparamLargeKernelConv",
    "RepConditionalPosEnc",
    "TextRepMixer",
    "ConvFFN",
}


def _types_at(model: nn.Module, names: list[str]) -> set[str]:
    modules = dict(model.named_modules())
    return {type(modules[name]).__name__ for name in names}


@pytest.mark.parametrize("variant", list_variants())
def test_every_variant_folds_to_its_train_form(variant: str) -> None:
    config = variant_config(variant)
    torch.manual_seed(0)
    model = randomise_branches(build_student(variant)).eval()
    fastvit = config.image.global_pool == "avg"  # MCi / FastViT trunk (B's ViT pools a token)
    pixels, tokens = check_inputs(model, num_images=2, image_size=64 if fastvit else None)
    reference = embed(model, pixels, tokens)
    pending_before = pending_folds(model)

    folded, report = fold_student(model, pixels, tokens)

    assert report.max_abs_diff["image"] <= ATOL and report.max_abs_diff["text"] <= ATOL, report.max_abs_diff
    # Random MCi towers embed all images within ~1e-4 of each other, so the input-dependent
    # part must match as well (export.parity).
    assert min(report.centred_cosine_min.values()) >= MIN_CENTRED_COSINE, report.centred_cosine_min
    assert pending_folds(folded) == []
    by_tower = report.folded_by_tower()
    notes = report.notes()
    # MCi image towers fold; B's ViT (a plain conv stem) has nothing to fold.
    assert (by_tower["image"] > 0) == fastvit, by_tower
    if not fastvit:
        assert notes["image"].startswith("nothing to fold")
        assert torch.equal(embed(folded, pixels, tokens)["image"], reference["image"])
    # Only MCt (S0, nano) has Text-RepMixer blocks; the base text transformer passes through.
    if config.text.kind == "mct":
        assert report.folded_by_type()["TextRepMixer"] == 2 and report.folded_by_type()["ConvFFN"] == 2
    else:
        assert by_tower["text"] == 0 and notes["text"].startswith("nothing to fold")
        assert torch.equal(embed(folded, pixels, tokens)["text"], reference["text"])
    assert sum(by_tower.values()) == len(pending_before)
    assert _types_at(model, pending_before) <= MULTI_BRANCH
    # The original is untouched: same branches, same outputs.
    assert pending_folds(model) == pending_before
    after = embed(model, pixels, tokens)
    assert all(torch.equal(after[tower], reference[tower]) for tower in reference)


def test_pending_folds_names_every_multi_branch_type() -> None:
    torch.manual_seed(0)
    model = build_student("MobileCLIP-nano").eval()
    assert _types_at(model, pending_folds(model)) == MULTI_BRANCH
    folded, report = fold_student(model, *check_inputs(model, num_images=1))
    assert pending_folds(folded) == [] and set(report.folded_by_type()) == MULTI_BRANCH


def test_pending_folds_catches_partial_and_unmarked_folds() -> None:
    mixer = TextRepMixer(8, 3).eval()
    mixer.reparameterize()
    assert pending_folds(mixer) == []
    mixer.norm = nn.BatchNorm2d(8)  # "folded" by its marker, yet a branch is back
    assert pending_folds(mixer) == ["<root>"]

    class Unmarked(nn.Module):  # a fold hook but no marker: judged by its BatchNorms
        def __init__(self) -> None:
            super().__init__()
            self.branch = nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8))

        def reparameterize(self) -> None:
            del self.branch

    holder = nn.Sequential(Unmarked())
    assert pending_folds(holder) == ["0"]
    holder[0].reparameterize()
    assert pending_folds(holder) == []


def test_a_student_in_train_mode_is_refused_and_left_as_is() -> None:
    torch.manual_seed(0)
    model = build_student("MobileCLIP-nano").train()
    pending = pending_folds(model)
    with pytest.raises(ValueError, match=r"train mode.*eval\(\)"):
        fold_student(model, *check_inputs(model, num_images=1))
    assert model.training and pending_folds(model) == pending
