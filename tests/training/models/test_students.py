import logging

import open_clip
import pytest
import torch

from export.reparameterize import pending_folds, reparameterize
from training.models.open_clip_models import fresh_model
from training.models.students import STUDENT_REGISTRY, build_student, load_student, save_student


def test_registry_has_the_mobileclip_family_and_rejects_unknown_names():
    for name in ("tiny-vit", "MobileCLIP-nano", "MobileCLIP-S0", "MobileCLIP-S1", "MobileCLIP-S2", "MobileCLIP-B"):
        assert name in STUDENT_REGISTRY
    with pytest.raises(KeyError, match="known"):
        build_student("MobileCLIP-S9")


@pytest.mark.parametrize("variant", ["tiny-vit", "MobileCLIP-nano"])
def test_student_round_trips_through_its_folder_plain_and_folded(tmp_path, variant):
    torch.manual_seed(0)
    model = build_student(variant).eval()
    pixels = torch.rand(2, 3, model.info.image_size, model.info.image_size)
    tokens = model.tokenizer()(["two red circles", "a blue star on stripes"])
    img, txt = model.encode_image(pixels), model.encode_text(tokens)
    assert img.shape == txt.shape == (2, model.info.embed_dim)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(2))

    save_student(model, tmp_path / "plain")
    plain = load_student(tmp_path / "plain")
    torch.testing.assert_close(plain.encode_image(pixels), img)

    folded, counts = reparameterize(model)
    assert not pending_folds(folded)
    if variant == "MobileCLIP-nano":
        assert counts, "nano has train-time branches (MobileOne, RepMixer, Text-RepMixer) to fold"
    save_student(folded, tmp_path / "folded", reparameterized=True)
    reloaded = load_student(tmp_path / "folded")
    torch.testing.assert_close(reloaded.encode_image(pixels), img, atol=1e-4, rtol=0)
    torch.testing.assert_close(reloaded.encode_text(tokens), txt, atol=1e-4, rtol=0)


def test_fresh_open_clip_model_drops_only_the_random_init_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        fresh_model("cf-tiny-vit-student")
        logging.getLogger().warning("another warning still shows")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["another warning still shows"]
    # The filter is scoped to the call: open_clip's own warning is back afterwards.
    with caplog.at_level(logging.WARNING):
        open_clip.create_model("cf-tiny-vit-student")
    assert any("No pretrained weights loaded" in record.getMessage() for record in caplog.records)
