"""The MobileCLIP model family: parameter counts, folding, shapes, causal masking."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.utils import reparameterize_model
from torch import nn

from export.reparameterize import pending_folds
from tests.fold_helpers import randomise_branches
from training.models.mobileclip import (
    ConvFFN,
    MobileClip,
    TextEncoder,
    TextRepMixer,
    TextRepMixerBlock,
    build_image_tower,
    build_mobileclip,
    build_text_tower,
    list_variants,
    variant_config,
)
from training.models.students import tower_params

EOT = 49407  # the CLIP tokenizer's end-of-text id, the highest in its vocabulary

# docs/method.md §4: params image + text (M).
PAPER_PARAMS = {"S0": (11.4, 42.4), "S1": (21.5, 63.4), "S2": (35.7, 63.4), "B": (86.3, 63.4)}


def _tokens(batch: int, length: int = 77, eot_at: int = 12, seed: int = 0) -> torch.Tensor:
    """[batch, length] ids: random words, EOT at ``eot_at``, zero padding after it."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, EOT - 2, (batch, length), generator=generator)
    tokens[:, eot_at] = EOT
    tokens[:, eot_at + 1 :] = 0
    return tokens


def _fold_copy(model: nn.Module) -> nn.Module:
    """An independent fold to check against: on an eval-mode copy, call every reparameterize()."""
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        if callable(getattr(module, "reparameterize", None)):
            module.reparameterize()
    return folded


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).abs().max())


@pytest.mark.parametrize("short", sorted(PAPER_PARAMS))
def test_param_counts_match_method_table(short: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_mobileclip(short)
    image, text = tower_params(model)
    paper_image, paper_text = PAPER_PARAMS[short]
    assert image / 1e6 == pytest.approx(paper_image, rel=0.02)
    assert text / 1e6 == pytest.approx(paper_text, rel=0.02)
    # The CLIP image head is one projection without bias.
    assert model.visual.proj.bias is None and model.visual.proj.out_features == 512
    assert model.text.text_projection.bias is None
    if short in ("S0", "B"):  # one forward per distinct tower pair (S1/S2 only deepen S0's MCi)
        _check_meta_forward_shapes(model)


def _check_meta_forward_shapes(model: MobileClip) -> None:
    """Forward a meta-device model: shapes propagate without any arithmetic."""
    size, config = model.config.image_size, model.config
    with torch.device("meta"):
        image, text = model.eval()(
            torch.empty(2, 3, size, size), torch.zeros(2, config.context_length, dtype=torch.long)
        )
    assert image.shape == (2, config.embed_dim) and text.shape == (2, config.embed_dim)


# Apple's ml-mobileclip README (img + txt, M). Its row for MobileCLIP2-S0 says 42.4M text, but
# the configs that load the released MobileCLIP2-S0 weights (Apple's and open_clip's) have the
# 12-layer base text transformer: 63.4M.
MOBILECLIP2_PARAMS = {
    "MobileCLIP2-S0": (11.4, 63.4),
    "MobileCLIP2-S2": (35.7, 63.4),
    "MobileCLIP2-B": (86.3, 63.4),
    "MobileCLIP2-S3": (125.1, 123.6),
    "MobileCLIP2-S4": (321.6, 123.6),
}


@pytest.mark.parametrize("name", sorted(MOBILECLIP2_PARAMS))
def test_mobileclip2_variants_build_and_forward(name: str) -> None:
    with torch.device("meta"):
        model = build_mobileclip(name)
    if name in ("MobileCLIP2-S3", "MobileCLIP2-S4"):  # S0/S2/B reuse the v1 towers forwarded above
        _check_meta_forward_shapes(model)
    image, text = tower_params(model)
    expected_image, expected_text = MOBILECLIP2_PARAMS[name]
    assert image / 1e6 == pytest.approx(expected_image, rel=0.02)
    assert text / 1e6 == pytest.approx(expected_text, rel=0.02)


def test_registry_names_layouts_and_pixels() -> None:
    names = list_variants()
    for expected in ("MobileCLIP-nano", "MobileCLIP-S0", "MobileCLIP-S1", "MobileCLIP-S2", "MobileCLIP-B"):
        assert expected in names
    for expected in ("MobileCLIP2-S0", "MobileCLIP2-S2", "MobileCLIP2-B", "MobileCLIP2-S3", "MobileCLIP2-S4"):
        assert expected in names
    assert variant_config("S0") is variant_config("MobileCLIP-S0")
    with pytest.raises(KeyError, match="unknown MobileCLIP variant"):
        variant_config("S9")
    # S0 alone has MCt; B alone (of v1) is causal.
    assert variant_config("S0").text.kind == "mct"
    assert all(variant_config(n).text.kind == "base" for n in ("S1", "S2", "B", "MobileCLIP2-S0"))
    assert [variant_config(n).text.causal for n in ("S0", "S1", "S2", "B")] == [False, False, False, True]
    # MobileCLIP v1 and MobileCLIP2 S0/S2/B take [0, 1] pixels.
    for name in ("nano", "S0", "S1", "S2", "B", "MobileCLIP2-S0", "MobileCLIP2-S2", "MobileCLIP2-B"):
        config = variant_config(name)
        assert (config.mean, config.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), name
    assert variant_config("MobileCLIP2-S3").std != (1.0, 1.0, 1.0)
    assert [variant_config(n).image_size for n in ("nano", "S0", "B")] == [64, 256, 224]


def test_mct_layout_is_repmixer_attention_repmixer() -> None:
    with torch.device("meta"):
        text = build_text_tower(variant_config("S0"))
    kinds = [type(block).__name__ for block in text.blocks]
    assert kinds == ["TextRepMixerBlock"] + ["ResidualAttentionBlock"] * 4 + ["TextRepMixerBlock"]
    assert text.width == 512 and text.context_length == 77 and text.vocab_size == 49408


def test_nano_forward_shapes_and_size() -> None:
    torch.manual_seed(0)
    model = build_mobileclip("nano").eval()
    assert isinstance(model, MobileClip)
    image, text = tower_params(model)
    assert image + text < 10_000_000  # CPU-sized
    assert model.image_tower is model.visual and model.text_tower is model.text
    with torch.no_grad():
        image_features, text_features = model(torch.rand(3, 3, 64, 64), _tokens(2, model.text.context_length))
    assert image_features.shape == (3, 128) and text_features.shape == (2, 128)
    assert torch.isfinite(image_features).all() and torch.isfinite(text_features).all()
    # Features come out un-normalised (callers normalise).
    assert not torch.allclose(text_features.norm(dim=-1), torch.ones(2))


def test_nano_has_every_foldable_block_type() -> None:
    model = build_mobileclip("nano")
    types = {type(module).__name__ for module in model.modules()}
    for expected in ("MobileOneBlock", "RepMixer", "RepConditionalPosEnc", "Attention", "TextRepMixer", "ConvFFN"):
        assert expected in types


def test_nano_fold_matches_unfolded() -> None:
    torch.manual_seed(0)
    model = build_mobileclip("nano")
    randomise_branches(model)
    model.eval()
    pixels, tokens = torch.rand(4, 3, 64, 64), _tokens(4, model.text.context_length)
    # The Text-RepMixer branches must matter, or the tolerance below proves nothing.
    block = next(m for m in model.modules() if isinstance(m, TextRepMixerBlock))
    probe = torch.randn(2, model.text.context_length, 128)
    with torch.no_grad():
        assert float((block(probe) - probe).abs().max()) > 0.05
    folded = _fold_copy(model)
    assert pending_folds(folded) == []
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.text.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.text.modules())  # the original is untouched
    with torch.no_grad():
        assert _max_diff(model.encode_image(pixels), folded.encode_image(pixels)) <= 1e-4
        assert _max_diff(model.encode_text(tokens), folded.encode_text(tokens)) <= 1e-4
    # timm's walk (the one export.reparameterize and load_student use) folds it the same way.
    walked = reparameterize_model(model)
    assert pending_folds(walked) == []
    assert walked.state_dict().keys() == folded.state_dict().keys()


def test_s0_text_tower_folds() -> None:
    torch.manual_seed(0)
    text = build_text_tower(variant_config("S0"))
    randomise_branches(text)
    text.eval()
    tokens = torch.cat([_tokens(1, eot_at=5, seed=1), _tokens(1, eot_at=40, seed=2)])
    folded = _fold_copy(text)
    assert pending_folds(folded) == []
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        reference, result = text(tokens), folded(tokens)
    assert reference.shape == (2, 512)
    assert _max_diff(reference, result) <= 1e-4


def test_s0_image_tower_folds_on_small_input() -> None:
    torch.manual_seed(0)
    image = build_image_tower(variant_config("S0"))
    randomise_branches(image)
    image.eval()
    pixels = torch.rand(2, 3, 64, 64)  # MCi is fully convolutional up to its pooled head
    folded = _fold_copy(image)
    assert pending_folds(folded) == []
    with torch.no_grad():
        reference, result = image(pixels), folded(pixels)
    assert reference.shape == (2, 512)
    assert _max_diff(reference, result) <= 1e-4


def test_text_repmixer_fold_is_exact_and_refuses_train_mode() -> None:
    torch.manual_seed(0)
    mixer, ffn = TextRepMixer(16, 11), ConvFFN(16, 11)
    randomise_branches(mixer)
    randomise_branches(ffn)
    x = torch.randn(3, 16, 1, 20)  # [B, D, 1, L]
    with pytest.raises(RuntimeError, match="eval mode"):
        mixer.reparameterize()
    for module in (mixer, ffn):
        module.eval()
        with torch.no_grad():
            reference = module(x)
            module.reparameterize()
            assert float((module(x) - reference).abs().max()) <= 1e-5
        assert module.reparam_conv is not None and module.reparam_conv.bias is not None
        assert module.reparam_conv.groups == 16 and module.reparam_conv.kernel_size == (1, 11)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    assert set(dict(mixer.named_parameters())) == {"reparam_conv.weight", "reparam_conv.bias"}


def test_base_b_text_tower_is_causal() -> None:
    torch.manual_seed(0)
    text = build_text_tower(variant_config("B")).eval()
    tokens = _tokens(2, eot_at=30)
    changed = tokens.clone()
    changed[:, 10] = 1234
    with torch.no_grad():
        before, after = text.forward_tokens(tokens), text.forward_tokens(changed)
    torch.testing.assert_close(before[:, :10], after[:, :10], atol=1e-6, rtol=0)  # no peeking at position 10
    assert not torch.allclose(before[:, 10:], after[:, 10:])
    # The pooled (EOT, position 30) feature does see it.
    with torch.no_grad():
        assert not torch.allclose(text(tokens), text(changed))


def test_non_causal_text_sees_later_tokens() -> None:
    torch.manual_seed(0)
    text = build_text_tower(variant_config("nano")).eval()
    tokens = _tokens(2, text.context_length, eot_at=30)
    changed = tokens.clone()
    changed[:, 10] = 1234
    with torch.no_grad():
        before, after = text.forward_tokens(tokens), text.forward_tokens(changed)
    assert not torch.allclose(before[:, :10], after[:, :10])


def test_eot_pooling_takes_the_highest_token_position() -> None:
    torch.manual_seed(0)
    text = build_text_tower(variant_config("nano")).eval()
    length = text.context_length
    tokens = torch.cat([_tokens(1, length, eot_at=3, seed=3), _tokens(1, length, eot_at=length - 2, seed=4)])
    with torch.no_grad():
        per_position = text.forward_tokens(tokens)
        expected = text.text_projection(torch.stack([per_position[0, 3], per_position[1, length - 2]]))
        assert torch.allclose(text(tokens), expected)


def test_bad_inputs_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="causal"):
        TextEncoder(blocks=("repmixer", "attn"), width=32, heads=2, embed_dim=16, causal=True)
    model = build_mobileclip("nano").eval()
    with pytest.raises(TypeError, match="integer"):
        model.encode_text(torch.rand(1, 77))
    with pytest.raises(ValueError, match="context length"):
        model.encode_text(torch.zeros(1, 78, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[batch, 3"):
        model.encode_image(torch.rand(1, 1, 64, 64))
