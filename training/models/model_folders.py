"""The manifest and quality suite of a stage that publishes open_clip model folders
(``teacher_models``, ``captioner_model``): one row per model folder.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from clipforge.gates.rules import Suite, in_set, positive
from training.models.open_clip_models import LoadedClip


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def manifest_row(folder_name: str, loaded: LoadedClip, **extra: Any) -> dict[str, Any]:
    return {
        "name": folder_name,
        "model_name": loaded.model_name,
        "kind": loaded.kind,
        "num_params": count_params(loaded.model),
        "embed_dim": loaded.embed_dim,
        "image_size": loaded.image_size,
        **extra,
    }


def model_folder_suite() -> Suite:
    return Suite(
        required=("name", "model_name", "kind", "num_params", "embed_dim", "image_size"),
        unique=(("name",),),
        rules=(
            in_set("kind", ["clip", "coca"]),
            positive("num_params"),
            positive("embed_dim"),
            positive("image_size"),
        ),
    )
