"""Nucleus sampling of captions from an open_clip CoCa, with a key/value cache.

open_clip's ``CoCa.generate`` needs ``transformers`` and recomputes the whole prefix and the
full vocabulary logits of every position at every step. Here:

- each image is encoded once and its cross-attention keys/values computed once, then shared
  by its S caption rows;
- each step feeds only the newest token through the text tower and the decoder, reusing the
  cached self-attention keys/values of earlier positions (tested equal to the uncached
  recomputation, which stays available as ``use_cache=False``);
- vocabulary logits are computed for the last position only, and only for the vocabulary
  columns that can win: projection columns that are exactly zero give logit 0 for every
  hidden state, so they are one lumped group (the bootstrapped captioner is trained that way,
  see ``training/trainers/coca_captioner.py``). A row whose nucleus would reach into that group falls back
  to the full vocabulary, so sampling is exact for any CoCa;
- randomness comes from per-image seeds (uniforms drawn up front and inverse-CDF sampling),
  so an image's captions do not depend on the batch it was captioned in.

Sampling never emits the start token or padding; the end token stops a caption (it is
banned until ``min_length`` tokens exist, so no caption is empty by construction).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from training.models.open_clip_models import LoadedClip

DEFAULT_SOT_ID = 49406
DEFAULT_EOT_ID = 49407
# Rows are first sampled among the top-k probabilities; only rows whose nucleus is not inside
# those k (rare for a trained model at top_p=0.9) pay for a full sort.
_TOP_K_FAST = 64


# ---------------------------------------------------------------- model pieces


def decoder_hidden(decoder: nn.Module, image_embs: torch.Tensor, token_embs: torch.Tensor) -> torch.Tensor:
    """open_clip ``MultimodalTransformer.forward`` without the vocabulary projection.

    image_embs [B, N, Wi] (the image tower's token output), token_embs [B, L, W] (the text
    tower's token output) -> [B, L, W] after ``ln_final``. Multiplying by
    ``decoder.text_projection`` [W, V] gives open_clip's logits.
    """
    if not getattr(decoder, "batch_first", True):
        raise ValueError("decoder_hidden supports batch-first open_clip decoders only")
    seq_len = token_embs.shape[1]
    x = token_embs
    for resblock, cross_attn in zip(decoder.resblocks, decoder.cross_attn, strict=True):
        x = resblock(x, attn_mask=decoder.attn_mask[:seq_len, :seq_len])
        x = cross_attn(x, k_x=image_embs, v_x=image_embs)
    return decoder.ln_final(x)


def text_token_embs(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The CoCa text tower's per-token output for [B, L] token ids -> [B, L, W] (uncached)."""
    out = model.text(tokens)
    if not isinstance(out, tuple):
        raise ValueError("the CoCa text tower must be built with output_tokens=True")
    return out[1]


def check_coca(model: nn.Module) -> None:
    """Clear error when ``model`` is not an open_clip CoCa this module can sample from."""
    for attr in ("visual", "text", "text_decoder"):
        if not hasattr(model, attr):
            raise TypeError(f"{type(model).__name__} is not an open_clip CoCa (no .{attr})")
    if getattr(model.text_decoder, "text_projection", None) is None:
        raise TypeError("the CoCa decoder has no vocabulary projection")
    if getattr(model.text, "attn_mask", None) is None:
        raise TypeError("the CoCa text tower is not causal; captions cannot be decoded left to right")


def _cacheable(model: nn.Module) -> bool:
    """The cached step re-implements ``ResidualAttentionBlock`` over ``nn.MultiheadAttention``."""
    blocks = [*model.text.transformer.resblocks, *model.text_decoder.resblocks, *model.text_decoder.cross_attn]
    return all(
        isinstance(getattr(b, "attn", None), nn.MultiheadAttention)
        and b.attn.in_proj_weight is not None
        and b.attn.batch_first
        and hasattr(b, "ln_1")
        and hasattr(b, "mlp")
        for b in blocks
    )


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[R, L, W] -> [R, heads, L, W / heads]."""
    r, length, width = x.shape
    return x.view(r, length, heads, width // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[R, heads, L, dh] -> [R, L, heads * dh]."""
    r, heads, length, dh = x.shape
    return x.transpose(1, 2).reshape(r, length, heads * dh)


def _mlp_tail(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class _SelfAttnCache:
    """Keys/values of one causal self-attention block for positions 0..t: [R, H, T, dh] each."""

    def __init__(self, rows: int, heads: int, max_len: int, head_dim: int, like: torch.Tensor) -> None:
        self.k = like.new_zeros(rows, heads, max_len, head_dim)
        self.v = like.new_zeros(rows, heads, max_len, head_dim)

    def select(self, rows: torch.Tensor) -> None:
        self.k = self.k[rows]
        self.v = self.v[rows]


def _self_attn_step(block: nn.Module, x: torch.Tensor, cache: _SelfAttnCache, pos: int) -> torch.Tensor:
    """One new position through a causal ``ResidualAttentionBlock``: x [R, 1, W] -> [R, 1, W]."""
    attn: nn.MultiheadAttention = block.attn
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    cache.k[:, :, pos] = _split_heads(k, attn.num_heads)[:, :, 0]
    cache.v[:, :, pos] = _split_heads(v, attn.num_heads)[:, :, 0]
    # The newest query may see every cached position, so no mask is needed.
    o = F.scaled_dot_product_attention(
        _split_heads(q, attn.num_heads), cache.k[:, :, : pos + 1], cache.v[:, :, : pos + 1]
    )
    x = x + block.ls_1(attn.out_proj(_merge_heads(o)))
    return _mlp_tail(block, x)


def _cross_kv(block: nn.Module, image_embs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-attention keys/values of [B, N, Wi] image tokens -> two [B, H, N, dh]."""
    attn: nn.MultiheadAttention = block.attn
    w = attn.in_proj_weight.shape[1]
    b = attn.in_proj_bias
    kv_in = block.ln_1_kv(image_embs)
    k = F.linear(kv_in, attn.in_proj_weight[w : 2 * w], None if b is None else b[w : 2 * w])
    v = F.linear(kv_in, attn.in_proj_weight[2 * w :], None if b is None else b[2 * w :])
    return _split_heads(k, attn.num_heads), _split_heads(v, attn.num_heads)


def _cross_attn_step(block: nn.Module, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    attn: nn.MultiheadAttention = block.attn
    w = attn.in_proj_weight.shape[1]
    b = attn.in_proj_bias
    q = F.linear(block.ln_1(x), attn.in_proj_weight[:w], None if b is None else b[:w])
    o = F.scaled_dot_product_attention(_split_heads(q, attn.num_heads), k, v)
    x = x + block.ls_1(attn.out_proj(_merge_heads(o)))
    return _mlp_tail(block, x)


class _Decoder:
    """Hidden state of the last position, step by step, cached or recomputed from scratch."""

    def __init__(self, model: nn.Module, image_embs: torch.Tensor, repeats: int, max_len: int, use_cache: bool) -> None:
        self.model = model
        self.use_cache = use_cache and _cacheable(model)
        self.prefix: torch.Tensor | None = None  # [R, t] token ids (uncached path only)
        if not self.use_cache:
            self.image_embs = image_embs.repeat_interleave(repeats, dim=0)  # [R, N, Wi]
            return
        text, dec = model.text, model.text_decoder
        rows = image_embs.shape[0] * repeats
        self.text_caches = [
            _SelfAttnCache(rows, b.attn.num_heads, max_len, b.attn.head_dim, image_embs)
            for b in text.transformer.resblocks
        ]
        self.dec_caches = [
            _SelfAttnCache(rows, b.attn.num_heads, max_len, b.attn.head_dim, image_embs) for b in dec.resblocks
        ]
        # Per cross block: keys/values computed once per image, then shared by its rows.
        self.cross = [
            tuple(t.repeat_interleave(repeats, dim=0) for t in _cross_kv(b, image_embs)) for b in dec.cross_attn
        ]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` (indices into the current rows) for the following steps."""
        if not self.use_cache:
            self.image_embs = self.image_embs[rows]
            if self.prefix is not None:
                self.prefix = self.prefix[rows]
            return
        for cache in (*self.text_caches, *self.dec_caches):
            cache.select(rows)
        self.cross = [(k[rows], v[rows]) for k, v in self.cross]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, pos: int) -> torch.Tensor:
        """Feed tokens [R] at position ``pos`` -> hidden state [R, W] of that position."""
        if not self.use_cache:
            new = tokens[:, None]
            self.prefix = new if self.prefix is None else torch.cat([self.prefix, new], dim=1)
            token_embs = text_token_embs(self.model, self.prefix)
            return decoder_hidden(self.model.text_decoder, self.image_embs, token_embs)[:, -1]
        text, dec = self.model.text, self.model.text_decoder
        x = (text.token_embedding(tokens) + text.positional_embedding[pos])[:, None]  # [R, 1, W]
        for block, cache in zip(text.transformer.resblocks, self.text_caches, strict=True):
            x = _self_attn_step(block, x, cache, pos)
        if text.cls_emb is None:
            # Without an appended class token, open_clip's token output is after ln_final.
            x = text.ln_final(x)
        for block, cache, cross, (k, v) in zip(dec.resblocks, self.dec_caches, dec.cross_attn, self.cross, strict=True):
            x = _self_attn_step(block, x, cache, pos)
            x = _cross_attn_step(cross, x, k, v)
        return dec.ln_final(x)[:, 0]


# ---------------------------------------------------------------- vocabulary head and nucleus


@dataclass
class _Head:
    """Vocabulary logits over the columns that can matter, plus the lumped all-zero columns."""

    projection: torch.Tensor  # [W, V] the decoder's full projection (fallback)
    active_ids: torch.Tensor  # [C] vocabulary ids computed explicitly
    active_proj: torch.Tensor  # [W, C]
    num_lumped: int  # all-zero columns that may be sampled (each has logit exactly 0)
    banned: torch.Tensor  # [K] ids never sampled (start token, padding)
    eot_id: int
    eot_col: int  # column of eot in active_ids

    @classmethod
    def build(cls, projection: torch.Tensor, eot_id: int, banned_ids: Sequence[int]) -> _Head:
        vocab = projection.shape[1]
        banned = torch.tensor(sorted({i for i in banned_ids if 0 <= i < vocab}), dtype=torch.long)
        zero = (projection == 0).all(dim=0)  # [V]
        is_banned = torch.zeros(vocab, dtype=torch.bool)
        is_banned[banned] = True
        active = ~zero & ~is_banned
        active[eot_id] = True
        lumped = zero & ~is_banned
        lumped[eot_id] = False
        active_ids = active.nonzero().squeeze(1)
        return cls(
            projection=projection,
            active_ids=active_ids,
            active_proj=projection[:, active_ids].contiguous(),
            num_lumped=int(lumped.sum()),
            banned=banned,
            eot_id=eot_id,
            eot_col=int((active_ids == eot_id).nonzero()[0, 0]),
        )

    def full_logits(self, hidden: torch.Tensor, ban_eot: bool) -> torch.Tensor:
        """[R, W] -> [R, V] with banned ids (and the end token if ``ban_eot``) at -inf."""
        logits = hidden @ self.projection
        logits[:, self.banned] = float("-inf")
        if ban_eot:
            logits[:, self.eot_id] = float("-inf")
        return logits


def nucleus_choice(
    probs: torch.Tensor,
    top_p: float,
    uniforms: torch.Tensor,
    floor: torch.Tensor | None = None,
    top_k: int = _TOP_K_FAST,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse-CDF sample inside the nucleus of each row.

    probs [R, C] (rows may sum to less than 1 when ``floor`` says the rest is a lumped group
    of tokens with probability ``floor`` [R] each), uniforms [R] in [0, 1). The nucleus is
    the shortest run of most likely tokens whose mass reaches ``top_p`` (the most likely
    token always belongs to it). Only the ``top_k`` most likely columns are sorted. Returns
    (column [R], ok [R]); a row is not ok when its nucleus is not decided by those columns:
    not enough mass among them, or a kept token no more likely than a lumped one.
    """
    num_cols = probs.shape[1]
    k = min(num_cols, top_k)
    if k == num_cols:
        # A stable sort breaks ties (e.g. the equal lumped tokens) by vocabulary id, so the
        # choice does not depend on which other rows share the call.
        p_sorted, order = probs.sort(dim=-1, descending=True, stable=True)
    else:
        p_sorted, order = probs.topk(k, dim=-1)  # [R, k] descending
    cum = p_sorted.cumsum(-1)
    keep = (cum - p_sorted) < top_p  # the mass before this token is short of top_p: keep it
    keep[:, 0] = True
    last = keep.sum(-1) - 1  # [R] index of the last kept token
    if k == num_cols and floor is None:
        ok = torch.ones_like(last, dtype=torch.bool)  # the whole distribution was sorted
    else:
        ok = cum[:, -1] >= top_p
        if floor is not None:
            ok &= p_sorted.gather(1, last[:, None])[:, 0] > floor
    kept = p_sorted * keep
    cdf = kept.cumsum(-1) / kept.sum(-1, keepdim=True)
    pick = (cdf < uniforms[:, None]).sum(-1).clamp(max=last)  # first index with cdf >= u
    return order.gather(1, pick[:, None])[:, 0], ok


def _sample_step(
    head: _Head, hidden: torch.Tensor, top_p: float, temperature: float, u: torch.Tensor, ban_eot: bool
) -> torch.Tensor:
    """hidden [R, W] -> sampled vocabulary ids [R]."""
    logits = (hidden @ head.active_proj) / temperature  # [R, C]
    if ban_eot:
        logits[:, head.eot_col] = float("-inf")
    floor = None
    if head.num_lumped:
        # Lumped tokens have logit 0: softmax over [active, 0 x num_lumped] without building it.
        m = logits.max(dim=-1, keepdim=True).values.clamp(min=0.0)  # [R, 1]
        e = (logits - m).exp()
        lump = (-m).exp()  # [R, 1] = exp(0 - m)
        z = e.sum(-1, keepdim=True) + head.num_lumped * lump
        probs, floor = e / z, (lump / z)[:, 0]
    else:
        probs = logits.softmax(dim=-1)
    cols, ok = nucleus_choice(probs, top_p, u, floor)
    ids = head.active_ids[cols]
    if not bool(ok.all()):
        # Rare: this row's nucleus is wide; decide it over the full, fully sorted vocabulary.
        bad = (~ok).nonzero().squeeze(1)
        full = (head.full_logits(hidden[bad], ban_eot) / temperature).softmax(dim=-1)
        ids[bad], _ = nucleus_choice(full, top_p, u[bad], top_k=full.shape[1])
    return ids


# ---------------------------------------------------------------- sampling


def per_image_uniforms(seeds: Sequence[int], num_captions: int, max_length: int) -> torch.Tensor:
    """[len(seeds) * S, max_length] uniforms; image i's rows come from its own seed only."""
    out = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed) % (2**63))
        out.append(torch.rand(num_captions, max_length, generator=gen, dtype=torch.float32))
    return torch.cat(out)


@torch.no_grad()
def sample_token_ids(
    model: nn.Module,
    pixels: torch.Tensor,
    *,
    num_captions: int,
    top_p: float,
    max_length: int,
    seeds: Sequence[int],
    sot_id: int = DEFAULT_SOT_ID,
    eot_id: int = DEFAULT_EOT_ID,
    temperature: float = 1.0,
    min_length: int = 1,
    use_cache: bool = True,
) -> list[list[int]]:
    """Sample ``num_captions`` token sequences per image from a CoCa.

    pixels [B, 3, H, W], already normalised for the model; seeds: one int per image. Returns
    B * S lists of token ids (image-major: image i owns rows i*S .. i*S+S-1), without the
    start token and without the end token, each at most ``max_length`` long.
    """
    check_coca(model)
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(seeds) != pixels.shape[0]:
        raise ValueError(f"need one seed per image: {len(seeds)} seeds for {pixels.shape[0]} images")
    context = int(model.text_decoder.attn_mask.shape[0])
    if not 1 <= max_length <= context - 1:
        raise ValueError(
            f"max_length must be in [1, {context - 1}] for this CoCa (context {context}), got {max_length}"
        )
    model.eval()
    pad_id = int(getattr(model, "pad_id", 0))
    head = _Head.build(model.text_decoder.text_projection.detach(), eot_id, banned_ids=(sot_id, pad_id))
    _, image_embs = model._encode_image(pixels)  # [B, N, Wi]
    decoder = _Decoder(model, image_embs, num_captions, max_length, use_cache)
    rows_total = pixels.shape[0] * num_captions
    u = per_image_uniforms(seeds, num_captions, max_length)  # [R, max_length]
    out: list[list[int]] = [[] for _ in range(rows_total)]
    alive = torch.arange(rows_total)  # original row of each current row
    tokens = torch.full((rows_total,), sot_id, dtype=torch.long)
    for pos in range(max_length):
        hidden = decoder.step(tokens, pos)
        ids = _sample_step(head, hidden, top_p, temperature, u[alive, pos], ban_eot=pos < min_length)
        done = ids == eot_id
        for row, tok in zip(alive[~done].tolist(), ids[~done].tolist(), strict=True):
            out[row].append(tok)
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(1)
            decoder.select(keep)
            alive, ids = alive[keep], ids[keep]
        tokens = ids
    return out


_SPECIAL = re.compile(r"<start_of_text>|<end_of_text>")
# The CLIP tokenizer splits punctuation off words and decodes it space-separated
# ("polka - dot", "side , on"); glue it back as written text has it.
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,;:!?'])")
_SPACED_HYPHEN = re.compile(r"(?<=\w)\s*-\s*(?=\w)")


def decode_caption(tokenizer: object, ids: Sequence[int]) -> str:
    """Token ids -> caption text: special tokens stripped, cut at the first period (docs/method.md §2.3)."""
    text = tokenizer.decode(list(ids))  # type: ignore[attr-defined]
    text = _SPECIAL.sub(" ", text)
    text = " ".join(text.split(".", 1)[0].split())
    return _SPACED_HYPHEN.sub("-", _SPACE_BEFORE_PUNCT.sub(r"\1", text))


def generate_captions(
    captioner: LoadedClip,
    images: Sequence[Image.Image],
    *,
    num_captions: int,
    top_p: float,
    max_length: int,
    seeds: Sequence[int],
    temperature: float = 1.0,
) -> list[list[str]]:
    """S captions per PIL image from a loaded CoCa folder (``load_model``, kind "coca")."""
    tok = captioner.tokenizer
    pixels = captioner.normalize_pixels(captioner.pixels_from_pil(images))
    ids = sample_token_ids(
        captioner.model,
        pixels,
        num_captions=num_captions,
        top_p=top_p,
        max_length=max_length,
        seeds=seeds,
        sot_id=int(getattr(tok, "sot_token_id", DEFAULT_SOT_ID)),
        eot_id=int(getattr(tok, "eot_token_id", DEFAULT_EOT_ID)),
        temperature=temperature,
    )
    texts = [decode_caption(tok, row) for row in ids]
    return [texts[i * num_captions : (i + 1) * num_captions] for i in range(len(images))]
