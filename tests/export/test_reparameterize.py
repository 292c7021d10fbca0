"""Folding train-time branches: refusal in train mode, pass-through, a real FastViT fold, reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from export.reparameterize import fold_state, pending_folds, reparameterize
from tests.fold_helpers import randomise_branches
from training.models.students import build_student, load_student, save_student


def test_train_mode_is_refused() -> None:
    model = timm.create_model("fastvit_mci0", pretrained=False, num_classes=0)
    with pytest.raises(ValueError, match=r"train mode.*eval\(\)"):
        reparameterize(model.train())
    # One submodule left in train mode is the same mistake.
    model.eval()
    model.stem[0].train()
    with pytest.raises(ValueError, match=r"stem\.0"):
        reparameterize(model)


def test_model_without_branches_passes_through_unchanged() -> None:
    model = build_student("tiny-vit").eval()
    folded, counts = reparameterize(model)
    assert counts == {}
    assert folded is not model  # always a copy
    assert folded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(folded.state_dict()[key], value), key
    pixels = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(folded.encode_image(pixels), model.encode_image(pixels))


def test_fastvit_mci0_folds_within_tolerance() -> None:
    torch.manual_seed(0)
    model = randomise_branches(timm.create_model("fastvit_mci0", pretrained=False, num_classes=0)).eval()
    pixels = torch.rand(1, 3, 64, 64)
    before_params = sum(p.numel() for p in model.parameters())
    folded, counts = reparameterize(model)
    with torch.no_grad():
        reference, out = model(pixels), folded(pixels)
    assert (reference - out).abs().max().item() <= 1e-4
    # The blocks MCi0 is made of, all folded (nested MobileOne blocks of RepMixers included).
    assert counts["MobileOneBlock"] > 0 and counts["RepMixer"] > 0
    assert counts["RepConditionalPosEnc"] == 1 and counts["ReparamLargeKernelConv"] > 0
    # No block is left with its branches: each foldable block now runs one reparam_conv.
    foldable = [(name, m) for name, m in folded.named_modules() if hasattr(m, "reparameterize")]
    assert foldable and all(m.reparam_conv is not None for _, m in foldable)
    assert pending_folds(folded) == []
    assert not any(isinstance(m, nn.BatchNorm2d) for _, b in foldable for m in b.modules())
    assert sum(p.numel() for p in folded.parameters()) < before_params
    # The original stays unfolded: folding works on a copy.
    originals = dict(model.named_modules())
    assert all(fold_state(originals[name]) == "unfolded" for name, _ in foldable)


def test_folded_student_reloads(tmp_path: Path, fastvit_variant: str) -> None:
    model = build_student(fastvit_variant).eval()
    folded, counts = reparameterize(model)
    assert sum(counts.values()) > 0
    save_student(folded, tmp_path / "model", reparameterized=True)
    assert json.loads((tmp_path / "model" / "student.json").read_text())["reparameterized"] is True

    reloaded = load_student(tmp_path / "model")
    assert pending_folds(reloaded) == []
    pixels = torch.rand(2, 3, 64, 64)
    tokens = reloaded.tokenizer()(["a red square", "two blue circles"])
    with torch.no_grad():
        assert torch.allclose(reloaded.encode_image(pixels), folded.encode_image(pixels), atol=1e-6)
        assert torch.allclose(reloaded.encode_text(tokens), model.encode_text(tokens), atol=1e-6)
        assert (reloaded.encode_image(pixels) - model.encode_image(pixels)).abs().max() <= 1e-4


def test_plain_student_folder_still_loads_as_before(tmp_path: Path) -> None:
    model = build_student("tiny-vit").eval()
    save_student(model, tmp_path / "model")
    assert "reparameterized" not in json.loads((tmp_path / "model" / "student.json").read_text())
    reloaded = load_student(tmp_path / "model")
    pixels = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(reloaded.encode_image(pixels), model.encode_image(pixels))
