"""Fixtures shared by the pipeline tests."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from training.models.open_clip_models import save_ensemble_index, save_model


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two randomly initialised tiny ViT teachers (different seeds) as a teacher_models folder."""
    folder = tmp_path_factory.mktemp("teacher_models")
    for seed in (0, 1):
        torch.manual_seed(seed)
        name = f"teacher{seed}"
        save_model(
            folder / name,
            name=name,
            model_name="cf-tiny-vit-teacher",
            model=open_clip.create_model("cf-tiny-vit-teacher"),
            logit_scale=100.0,
        )
    save_ensemble_index(folder, ["teacher0", "teacher1"])
    return folder
