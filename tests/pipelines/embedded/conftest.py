"""The embedded generator's outputs at a small size, shared by its tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.embedded.benchmark import generate_benchmark
from pipelines.embedded.pool import generate_pool
from tests.conftest import section

CFG = section(
    "embedded_corpus", seed=3, pool_size=100, teacher_corpus_size=30, benchmark_size=16, image_size=48, shard_size=40
)
DATACOMP_COLUMNS = [
    "uid",
    "url",
    "text",
    "original_width",
    "original_height",
    "sha256",
    "clip_b32_similarity_score",
    "clip_l14_similarity_score",
    "face_bboxes",
]


@pytest.fixture(scope="module")
def pool_generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("pool")
    return out, generate_pool(out, CFG)


@pytest.fixture(scope="module")
def pool_dir(pool_generated: tuple[Path, pd.DataFrame]) -> Path:
    return pool_generated[0]


@pytest.fixture(scope="module")
def pool_frame(pool_generated: tuple[Path, pd.DataFrame]) -> pd.DataFrame:
    return pool_generated[1]


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    generate_benchmark(out, CFG)
    return out


def tar_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.tar"))}
