"""The CoCa sampler: cache equals recomputation, nucleus semantics, lumped vocabulary, seeds."""

from __future__ import annotations

import open_clip
import pytest
import torch

from training.models import coca_sampling as cs

SOT, EOT, PAD = cs.DEFAULT_SOT_ID, cs.DEFAULT_EOT_ID, 0


def _tiny_coca(seed: int = 0) -> open_clip.CoCa:
    torch.manual_seed(seed)
    model = open_clip.CoCa(
        embed_dim=32,
        multimodal_cfg={"context_length": 16, "width": 32, "heads": 2, "layers": 2, "attn_pooler_heads": 2},
        text_cfg={"context_length": 16, "width": 32, "heads": 2, "layers": 2, "embed_cls": True, "output_tokens": True},
        vision_cfg={
            "image_size": 16,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 8,
            "attentional_pool": True,
            "attn_pooler_heads": 2,
            "attn_pooler_queries": 5,
            "output_tokens": True,
        },
    )
    # open_clip leaves the decoder's vocabulary projection uninitialised (torch.empty).
    with torch.no_grad():
        model.text_decoder.text_projection.normal_(0, 32**-0.5)
    return model.eval()


def _sharpen(model: open_clip.CoCa, keep: int = 40, scale: float = 8.0, seed: int = 0) -> torch.Tensor:
    """Make the model look bootstrapped: few non-zero, large projection columns (EOT among them)."""
    gen = torch.Generator().manual_seed(seed)
    proj = model.text_decoder.text_projection
    ids = torch.randperm(proj.shape[1] - 2, generator=gen)[:keep] + 1  # never SOT/EOT/pad
    ids = torch.cat([ids, torch.tensor([EOT])])
    with torch.no_grad():
        cols = proj[:, ids].clone() * scale
        proj.zero_()
        proj[:, ids] = cols
    return ids


@pytest.fixture(scope="module")
def model() -> open_clip.CoCa:
    return _tiny_coca()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def test_cached_steps_equal_open_clip_full_forward(model: open_clip.CoCa, pixels: torch.Tensor) -> None:
    tokens = torch.randint(1, SOT, (3, 9), generator=torch.Generator().manual_seed(2))
    tokens[:, 0] = SOT
    with torch.no_grad():
        _, embs = model._encode_image(pixels)
        ref = model(pixels, tokens, image_latent=torch.zeros(3, 1), image_embs=embs, output_labels=False)["logits"]
        hidden = cs.decoder_hidden(model.text_decoder, embs, cs.text_token_embs(model, tokens))
        assert torch.allclose(hidden @ model.text_decoder.text_projection, ref, atol=1e-5)
        cached = cs._Decoder(model, embs, 1, 12, use_cache=True)
        uncached = cs._Decoder(model, embs, 1, 12, use_cache=False)
        assert cached.use_cache and not uncached.use_cache
        proj = model.text_decoder.text_projection
        for pos in range(tokens.shape[1]):
            h_cached = cached.step(tokens[:, pos], pos)
            h_full = uncached.step(tokens[:, pos], pos)
            assert torch.allclose(h_cached, h_full, atol=1e-5), pos
            assert torch.allclose(h_cached @ proj, ref[:, pos], atol=1e-4), pos
        # Positions are not interchangeable: the check above can fail.
        assert not torch.allclose(ref[:, 3], ref[:, 4], atol=1e-3)


def test_cache_survives_row_selection(model: open_clip.CoCa, pixels: torch.Tensor) -> None:
    tokens = torch.randint(1, SOT, (6, 5), generator=torch.Generator().manual_seed(3))
    tokens[:, 0] = SOT
    with torch.no_grad():
        _, embs = model._encode_image(pixels)
        dec = cs._Decoder(model, embs, 2, 8, use_cache=True)  # rows: image 0,0,1,1,2,2
        for pos in range(3):
            dec.step(tokens[:, pos], pos)
        keep = torch.tensor([1, 4])
        dec.select(keep)
        h = dec.step(tokens[keep, 3], 3)
        ref_dec = cs._Decoder(model, embs.repeat_interleave(2, 0)[keep], 1, 8, use_cache=False)
        for pos in range(4):
            ref_h = ref_dec.step(tokens[keep, pos], pos)
        assert torch.allclose(h, ref_h, atol=1e-5)


def _greedy_reference(model: open_clip.CoCa, pixels: torch.Tensor, max_length: int) -> list[list[int]]:
    """Greedy decoding through open_clip's own forward, full vocabulary, same bans."""
    out = []
    with torch.no_grad():
        for i in range(pixels.shape[0]):
            img = pixels[i : i + 1]
            _, embs = model._encode_image(img)
            seq = [SOT]
            for pos in range(max_length):
                x = torch.tensor([seq])
                logits = model(img, x, image_latent=torch.zeros(1, 1), image_embs=embs, output_labels=False)["logits"]
                logits = logits[0, -1].clone()
                logits[[SOT, PAD]] = float("-inf")
                if pos < 1:
                    logits[EOT] = float("-inf")
                tok = int(logits.argmax())
                if tok == EOT:
                    break
                seq.append(tok)
            out.append(seq[1:])
    return out


@pytest.mark.parametrize("sharpen", [False, True], ids=["full-vocab", "lumped-vocab"])
def test_top_p_to_zero_is_greedy(pixels: torch.Tensor, sharpen: bool) -> None:
    model = _tiny_coca(seed=5)
    if sharpen:
        _sharpen(model)
    ids = cs.sample_token_ids(model, pixels, num_captions=2, top_p=1e-9, max_length=10, seeds=[1, 2, 3])
    greedy = _greedy_reference(model, pixels, 10)
    assert ids == [g for g in greedy for _ in range(2)]


def test_nucleus_never_samples_outside() -> None:
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).expand(20000, 4)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    cols, ok = cs.nucleus_choice(probs, 0.75, u)
    assert bool(ok.all())
    counts = torch.bincount(cols, minlength=4).float() / len(cols)
    # Nucleus at 0.75: {1 (0.5), 3 (0.3)}, renormalised to 0.625 / 0.375.
    assert counts[0] == 0 and counts[2] == 0
    assert abs(counts[1] - 0.625) < 0.02 and abs(counts[3] - 0.375) < 0.02
    cols, _ = cs.nucleus_choice(probs, 0.85, u)
    assert set(cols.tolist()) == {1, 2, 3}


def test_nucleus_flags_rows_it_cannot_decide() -> None:
    # Mass 0.6 visible, rest lumped in 40 tokens of 0.01: top_p 0.5 is decided, 0.9 is not.
    probs = torch.tensor([[0.4, 0.2]])
    floor = torch.tensor([0.01])
    u = torch.tensor([0.3])
    assert bool(cs.nucleus_choice(probs, 0.5, u, floor)[1].all())
    assert not bool(cs.nucleus_choice(probs, 0.9, u, floor)[1].any())


@pytest.mark.parametrize("top_p", [0.5, 0.9, 1.0])
def test_lumped_head_samples_like_full_vocabulary(top_p: float) -> None:
    model = _tiny_coca(seed=7)
    _sharpen(model, keep=30, scale=3.0)
    proj = model.text_decoder.text_projection.detach()
    head = cs._Head.build(proj, EOT, banned_ids=(SOT, PAD))
    assert head.num_lumped == proj.shape[1] - 31 - 2  # 30 kept + EOT; SOT and pad banned
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(400, proj.shape[0], generator=gen)
    u = torch.rand(400, generator=gen)
    ids = cs._sample_step(head, hidden, top_p, 1.0, u, ban_eot=False)
    full = head.full_logits(hidden, ban_eot=False).softmax(-1)
    ref, _ = cs.nucleus_choice(full, top_p, u, top_k=full.shape[1])
    assert torch.equal(ids, ref)
    assert not bool(torch.isin(ids, torch.tensor([SOT, PAD])).any())


def test_captions_never_hold_special_tokens(pixels: torch.Tensor) -> None:
    model = _tiny_coca(seed=9)
    ids = cs.sample_token_ids(model, pixels, num_captions=4, top_p=0.9, max_length=12, seeds=[4, 5, 6])
    assert len(ids) == 12 and all(1 <= len(row) <= 12 for row in ids)
    flat = torch.tensor([t for row in ids for t in row])
    assert not bool(torch.isin(flat, torch.tensor([SOT, EOT, PAD])).any())
    tok = open_clip.get_tokenizer("ViT-B-32")
    for row in ids:
        text = cs.decode_caption(tok, row)
        assert "<start_of_text>" not in text and "<end_of_text>" not in text and "." not in text


def test_decode_strips_and_cuts_at_first_period() -> None:
    tok = open_clip.get_tokenizer("ViT-B-32")
    ids = tok(["a red circle. and then more words"])[0].tolist()
    assert cs.decode_caption(tok, ids) == "a red circle"
    body = tok.encode("two blue stars on a dotted background")
    assert cs.decode_caption(tok, body) == "two blue stars on a dotted background"
    glued = tok.encode("a polka-dot background, on the left")
    assert cs.decode_caption(tok, glued) == "a polka-dot background, on the left"


def test_seeded_sampling_is_deterministic(pixels: torch.Tensor) -> None:
    # A peaked (bootstrapped-like) model: with 49k near-equal probabilities, cached and
    # uncached float rounding could move an inverse-CDF boundary.
    model = _tiny_coca(seed=11)
    _sharpen(model, keep=60, scale=12.0)
    kwargs = {"num_captions": 3, "top_p": 0.9, "max_length": 8}
    a = cs.sample_token_ids(model, pixels, seeds=[10, 11, 12], **kwargs)
    b = cs.sample_token_ids(model, pixels, seeds=[10, 11, 12], **kwargs)
    c = cs.sample_token_ids(model, pixels, seeds=[20, 21, 22], **kwargs)
    assert a == b
    assert a != c
    uncached = cs.sample_token_ids(model, pixels, seeds=[10, 11, 12], use_cache=False, **kwargs)
    assert uncached == a
    # An image's random stream depends on its own seed only.
    assert torch.equal(cs.per_image_uniforms([11], 3, 8), cs.per_image_uniforms([10, 11], 3, 8)[3:])


def test_bad_arguments_are_refused(model: open_clip.CoCa, pixels: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="max_length"):
        cs.sample_token_ids(model, pixels, num_captions=1, top_p=0.9, max_length=16, seeds=[1, 2, 3])
    with pytest.raises(ValueError, match="one seed per image"):
        cs.sample_token_ids(model, pixels, num_captions=1, top_p=0.9, max_length=4, seeds=[1])
    with pytest.raises(ValueError, match="top_p"):
        cs.sample_token_ids(model, pixels, num_captions=1, top_p=0.0, max_length=4, seeds=[1, 2, 3])
    with pytest.raises(TypeError, match="not an open_clip CoCa"):
        cs.sample_token_ids(torch.nn.Linear(2, 2), pixels, num_captions=1, top_p=0.9, max_length=4, seeds=[1, 2, 3])
