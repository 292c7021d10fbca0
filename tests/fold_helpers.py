"""Test helper shared by the folding and export tests: make every train-time branch matter."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomise_branches(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorms non-trivial statistics and layer scales O(1) values; returns ``model``.

    At initialisation layer scales are 1e-5 and BatchNorms are identities, so a wrong fold
    would still match to 1e-4; after this every branch changes the output.
    """
    generator = torch.Generator().manual_seed(seed)

    def draw(tensor: torch.Tensor, low: float, high: float) -> None:
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            draw(module.running_mean, -0.2, 0.2)
            draw(module.running_var, 0.5, 2.0)
            draw(module.weight, 0.5, 1.5)
            draw(module.bias, -0.2, 0.2)
    for name, param in model.named_parameters():
        if "gamma" in name or "layer_scale" in name:
            draw(param, 0.2, 1.0)
    return model
