"""Image trunks clipforge registers in timm's model registry, so open_clip configs name them
(``vision_cfg.timm_model_name``) and open_clip's own code builds and loads them.

timm's smallest ResNet (``test_resnet``, 96 pooled features) and its next size up
(``resnet10t``, 4.9M parameters, ~2.5x slower per step on one CPU core) bracket what a
bootstrapped teacher can afford. ``cf_scene_resnet`` sits between them: the same four one-block
stages with wider channels, so the pooled features are 256 wide. On the embedded validation
split, supervised on four scene facts for 1000 steps (bf16, one core), its fact head named the
shape of a lone object 0.575 of the time against ``test_resnet``'s 0.525, at +15% per step.
"""

from __future__ import annotations

from typing import Any

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet

# timm's registry reads a module's ``default_cfgs`` when it registers the module's models;
# nothing to download: clipforge trains these from scratch.
default_cfgs = generate_default_cfgs(
    {"cf_scene_resnet": {"url": "", "num_classes": 0, "input_size": (3, 64, 64), "pool_size": (2, 2)}}
)


@register_model
def cf_scene_resnet(pretrained: bool = False, **kwargs: Any) -> ResNet:
    """Four BasicBlock stages (32, 64, 128, 256 channels), deep stem (16 wide), avg-pool downsampling."""
    args = dict(
        block=BasicBlock,
        layers=(1, 1, 1, 1),
        channels=(32, 64, 128, 256),
        stem_width=16,
        stem_type="deep",
        avg_down=True,
    )
    return build_model_with_cfg(ResNet, "cf_scene_resnet", pretrained, **dict(args, **kwargs))
