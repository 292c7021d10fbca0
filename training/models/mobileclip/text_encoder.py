"""Text towers of the MobileCLIP family: MCt (S0) and the base 12-layer transformer.

One module serves both: token embedding + learned positions, a stack of blocks, a final
LayerNorm, EOT pooling (the position of the highest token id, which is the end-of-text token
of the CLIP tokenizer) and a projection without bias (docs/method.md §4). The attention blocks are
open_clip's pre-norm ``ResidualAttentionBlock`` (nn.MultiheadAttention with biases, GELU MLP),
so the base tower has exactly the parameters of open_clip's ``TextTransformer``
(MobileCLIP-S1/S2/B configs); MCt swaps its first and last blocks for Text-RepMixer blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from open_clip.transformer import LayerNorm, ResidualAttentionBlock
from torch import nn

from training.models.mobileclip.text_blocks import TextRepMixerBlock

BlockKind = Literal["attn", "repmixer"]


def text_block_layout(kind: Literal["base", "mct"], transformer_layers: int) -> tuple[BlockKind, ...]:
    """``base``: N attention blocks; ``mct``: [Text-RepMixer, N attention blocks, Text-RepMixer]."""
    if kind == "base":
        return ("attn",) * transformer_layers
    if kind == "mct":
        return ("repmixer", *(("attn",) * transformer_layers), "repmixer")
    raise ValueError(f"unknown text tower kind {kind!r}; expected 'base' or 'mct'")


class TextEncoder(nn.Module):
    """Tokens [B, L] (L <= context_length) -> un-normalised text features [B, embed_dim]."""

    def __init__(
        self,
        *,
        blocks: Sequence[BlockKind],
        width: int,
        heads: int,
        embed_dim: int,
        context_length: int = 77,
        vocab_size: int = 49408,
        mlp_ratio: float = 4.0,
        causal: bool = False,
        repmixer_kernel: int = 11,
    ) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"text width {width} is not divisible by {heads} heads")
        if causal and "repmixer" in blocks:
            raise ValueError(
                "a causal text tower cannot hold Text-RepMixer blocks: their (1, k) convolutions mix "
                "later tokens into earlier positions"
            )
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.width = width
        self.causal = causal
        self.block_kinds = tuple(blocks)
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, batch_first=True)
            if kind == "attn"
            else TextRepMixerBlock(width, repmixer_kernel, mlp_ratio)
            for kind in self.block_kinds
        )
        self.ln_final = LayerNorm(width)
        self.text_projection = nn.Linear(width, embed_dim, bias=False)
        # Additive mask [context, context]: -inf above the diagonal stops position i from
        # attending to j > i. Not persistent: it is rebuilt from the config, never loaded.
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1) if causal else None
        self.register_buffer("attn_mask", mask, persistent=False)
        self._init_parameters()

    def _init_parameters(self) -> None:
        # open_clip's text initialisation (CLIP's): small embeddings, depth-scaled projections.
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std = self.width**-0.5
        proj_std = attn_std * (2 * len(self.blocks)) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.blocks:
            if isinstance(block, ResidualAttentionBlock):
                nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
                nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection.weight, std=self.width**-0.5)

    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-position features after the final LayerNorm: [B, L] -> [B, L, width]."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tuple(tokens.shape)}")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        length = tokens.shape[1]
        if length > self.context_length:
            raise ValueError(f"{length} tokens exceed the context length {self.context_length}")
        x = self.token_embedding(tokens) + self.positional_embedding[:length]  # [B, L, width]
        mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        for block in self.blocks:
            x = block(x, attn_mask=mask)
        return self.ln_final(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.forward_tokens(tokens)  # [B, L, width]
        # EOT pooling: the end-of-text token has the highest id in each sequence.
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]  # [B, width]
        return self.text_projection(pooled)  # [B, embed_dim]
