"""MCt's convolutional text blocks: Text-RepMixer, ConvFFN and the block that pairs them.

A text sequence (B, L, D) is viewed as a one-row image (B, D, 1, L) so token mixing is a
depthwise (1, k) convolution over positions (docs/method.md §4). Both train-time conv/BatchNorm
branches fold into one depthwise convolution with bias (docs/method.md §2.8). Folding follows
timm's convention so ``export.reparameterize`` can tell folded from unfolded blocks:
``reparam_conv`` is ``None`` until ``reparameterize()`` runs, then the folded conv and the
train-time branches are gone.
"""

from __future__ import annotations

import torch
from torch import nn


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``y = scale * x + shift``; both [C]."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    std = (bn.running_var + bn.eps).sqrt()
    weight = bn.weight if bn.weight is not None else torch.ones_like(std)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(std)
    scale = weight / std
    return scale, bias - bn.running_mean * scale


def _identity_kernel(channels: int, kernel_size: int, like: torch.Tensor) -> torch.Tensor:
    """Depthwise (1, k) kernel [C, 1, 1, k] that passes each channel through unchanged."""
    kernel = torch.zeros(channels, 1, 1, kernel_size, dtype=like.dtype, device=like.device)
    kernel[:, 0, 0, kernel_size // 2] = 1.0
    return kernel


def _depthwise_conv(channels: int, kernel_size: int, *, bias: bool) -> nn.Conv2d:
    # (1, k) kernel with "same" padding along the sequence axis: L positions in, L out.
    return nn.Conv2d(channels, channels, (1, kernel_size), padding=(0, kernel_size // 2), groups=channels, bias=bias)


def _check_foldable(module: nn.Module) -> None:
    if module.training:
        raise RuntimeError(
            f"{type(module).__name__}.reparameterize() needs eval mode: folding reads BatchNorm running "
            "statistics, while a train-mode module normalises with batch statistics"
        )


class TextRepMixer(nn.Module):
    """Token mixer ``x + gamma * (mixer(x) - norm(x))`` on [B, D, 1, L].

    ``mixer`` is a depthwise (1, k) conv + BatchNorm plus a BatchNorm skip branch; ``norm`` is
    a BatchNorm. After ``reparameterize()`` the whole expression is one depthwise conv with bias.
    """

    def __init__(self, dim: int, kernel_size: int = 11, layer_scale_init: float = 1e-5) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the sequence length, got {kernel_size}")
        self.dim = dim
        self.kernel_size = kernel_size
        self.mixer_conv = _depthwise_conv(dim, kernel_size, bias=False)
        self.mixer_bn = nn.BatchNorm2d(dim)
        self.mixer_skip = nn.BatchNorm2d(dim)
        self.norm = nn.BatchNorm2d(dim)
        self.gamma = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))
        self.reparam_conv: nn.Conv2d | None = None
        nn.init.trunc_normal_(self.mixer_conv.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [B, D, 1, L] -> [B, D, 1, L]
        if self.reparam_conv is not None:
            return self.reparam_conv(x)
        mixed = self.mixer_bn(self.mixer_conv(x)) + self.mixer_skip(x)
        return x + self.gamma * (mixed - self.norm(x))

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        _check_foldable(self)
        conv_scale, conv_shift = _bn_affine(self.mixer_bn)
        skip_scale, skip_shift = _bn_affine(self.mixer_skip)
        norm_scale, norm_shift = _bn_affine(self.norm)
        eye = _identity_kernel(self.dim, self.kernel_size, self.mixer_conv.weight)
        gamma = self.gamma.view(-1)
        per_channel = (-1, 1, 1, 1)  # [C] -> [C, 1, 1, 1] against a [C, 1, 1, k] depthwise kernel
        # mixer(x) - norm(x) = conv_bn(x) + (skip_scale - norm_scale) * x + (skip_shift - norm_shift)
        branch = self.mixer_conv.weight * conv_scale.view(per_channel) + eye * (skip_scale - norm_scale).view(
            per_channel
        )
        folded = _depthwise_conv(self.dim, self.kernel_size, bias=True).to(eye)
        folded.weight.copy_(eye + gamma.view(per_channel) * branch)
        folded.bias.copy_(gamma * (conv_shift + skip_shift - norm_shift))
        del self.mixer_conv, self.mixer_bn, self.mixer_skip, self.norm, self.gamma
        self.reparam_conv = folded


class ConvFFN(nn.Module):
    """Depthwise (1, k) conv + BatchNorm, 1x1 conv expanding ``mlp_ratio``x, GELU, 1x1 conv.

    [B, D, 1, L] -> [B, D, 1, L]. ``reparameterize()`` folds the conv + BatchNorm pair.
    """

    def __init__(self, dim: int, kernel_size: int = 11, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the sequence length, got {kernel_size}")
        hidden = int(dim * mlp_ratio)
        self.dim = dim
        self.kernel_size = kernel_size
        self.dw_conv = _depthwise_conv(dim, kernel_size, bias=False)
        self.dw_bn = nn.BatchNorm2d(dim)
        self.reparam_conv: nn.Conv2d | None = None
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        for conv in (self.dw_conv, self.fc1, self.fc2):
            nn.init.trunc_normal_(conv.weight, std=0.02)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reparam_conv(x) if self.reparam_conv is not None else self.dw_bn(self.dw_conv(x))
        return self.fc2(self.act(self.fc1(x)))  # [B, D, 1, L] -> [B, hidden, 1, L] -> [B, D, 1, L]

    @torch.no_grad()
    def reparameterize(self) -> None:
        if self.reparam_conv is not None:
            return
        _check_foldable(self)
        scale, shift = _bn_affine(self.dw_bn)
        folded = _depthwise_conv(self.dim, self.kernel_size, bias=True).to(self.dw_conv.weight)
        folded.weight.copy_(self.dw_conv.weight * scale.view(-1, 1, 1, 1))
        folded.bias.copy_(shift)
        del self.dw_conv, self.dw_bn
        self.reparam_conv = folded


class TextRepMixerBlock(nn.Module):
    """MCt's convolutional block on token sequences: [B, L, D] -> [B, L, D].

    ``x = mixer(x); x = x + layer_scale * ConvFFN(x)`` on the (B, D, 1, L) view. Its (1, k)
    convolutions see k // 2 tokens on each side, so the block cannot be causal.
    """

    def __init__(self, dim: int, kernel_size: int = 11, mlp_ratio: float = 4.0, layer_scale_init: float = 1e-5) -> None:
        super().__init__()
        self.token_mixer = TextRepMixer(dim, kernel_size, layer_scale_init)
        self.ffn = ConvFFN(dim, kernel_size, mlp_ratio)
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), layer_scale_init))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        # attn_mask is accepted so attention and conv blocks share one call signature; a conv
        # block has nothing to mask (the text encoder refuses causal models with these blocks).
        if x.dim() != 3:
            raise ValueError(f"TextRepMixerBlock expects [B, L, D], got shape {tuple(x.shape)}")
        x = x.transpose(1, 2).unsqueeze(2)  # [B, L, D] -> [B, D, 1, L]
        x = self.token_mixer(x)
        x = x + self.layer_scale * self.ffn(x)
        return x.squeeze(2).transpose(1, 2)  # [B, D, 1, L] -> [B, L, D]
