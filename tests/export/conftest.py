"""A FastViT (MCi0) student registered as a variant for the folding tests."""

from __future__ import annotations

import open_clip
import pytest
import torch
from open_clip.model import CLIP

from tests.fold_helpers import randomise_branches
from training.models import students
from training.models.students import StudentClip, StudentInfo

FASTVIT_VARIANT = "test-fastvit-mci0"


def fastvit_student() -> StudentClip:
    """A small CLIP whose image tower is timm's fastvit_mci0 (MCi0), random init, 64 px."""
    torch.manual_seed(0)
    clip = CLIP(
        embed_dim=32,
        vision_cfg={
            "timm_model_name": "fastvit_mci0",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": "linear",
            "image_size": 64,
        },
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    )
    info = StudentInfo(
        variant=FASTVIT_VARIANT,
        image_size=64,
        context_length=77,
        embed_dim=32,
        mean=tuple(open_clip.OPENAI_DATASET_MEAN),
        std=tuple(open_clip.OPENAI_DATASET_STD),
        tokenizer="cf-tiny-vit-student",
    )
    return StudentClip(randomise_branches(clip), info)


@pytest.fixture
def fastvit_variant(monkeypatch: pytest.MonkeyPatch) -> str:
    # A real registry entry, so load_student rebuilds it exactly as it would a shipped variant.
    monkeypatch.setitem(students.STUDENT_REGISTRY, FASTVIT_VARIANT, fastvit_student)
    return FASTVIT_VARIANT
