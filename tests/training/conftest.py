"""Fixtures the training tests share: a tiny published-looking reinforced_dataset folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from clipforge.stage_api import MANIFEST_FILE
from tests.conftest import aug_settings
from tests.training.student_helpers import DIMS, SCALES, caption
from training.data.augment import sample_aug_params
from training.data.dr_format import DRMeta, DRSample, write_shard


def _unit_rows(rng: np.random.Generator, rows: int) -> np.ndarray:
    """[rows, sum DIMS]: each teacher's part L2-normalised."""
    parts = [rng.normal(size=(rows, d)) for d in DIMS]
    return np.concatenate([p / np.linalg.norm(p, axis=1, keepdims=True) for p in parts], axis=1).astype(np.float32)


def _jpg(i: int) -> bytes:
    rgb = np.zeros((40, 48, 3), dtype=np.uint8)
    rgb[..., i % 3] = 60 + 15 * i
    rgb[10 + i % 10 : 30, 8:40, (i + 1) % 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dr_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published-looking reinforced_dataset folder: 12 good samples and 1 without an image."""
    folder = tmp_path_factory.mktemp("reinforced_dataset")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(13):
        samples.append(
            DRSample.from_combined(
                uid=f"{i:032x}",
                param_aug=[sample_aug_params(rng, 48, 40, **aug_settings()) for _ in range(2)],
                image_emb=_unit_rows(rng, 2),
                text_emb=_unit_rows(rng, 3),  # real caption + 2 synthetic
                syn_text=[f"{caption(i)} seen", f"picture of {caption(i)}"],
                key=f"s{i:04d}",
                jpg=None if i == 12 else _jpg(i),
                txt=caption(i),
                sha256="0" * 64,
            )
        )
    write_shard(folder / "shards" / "00000.tar", samples, embedding_format="npz")
    DRMeta(
        teachers=("t0", "t1"),
        teacher_dims=tuple(DIMS),
        logit_scales=tuple(SCALES),
        num_augmentations=2,
        num_captions=2,
        image_sizes=(64, 64),
    ).write(folder)
    # Every published stage folder has one (student_model's resume key hashes it).
    pd.DataFrame({"uid": [s.uid for s in samples]}).to_parquet(folder / MANIFEST_FILE, index=False)
    return folder
