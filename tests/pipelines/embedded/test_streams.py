"""Each part of the corpus has its own random stream: same seed, same bytes; resizing one part
leaves the others alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from pipelines import embedded_corpus as ec
from pipelines.embedded.streams import BENCHMARK_STREAM, POOL_STREAM, TEACHER_STREAM, stream_rng
from tests.pipelines.embedded.conftest import CFG, tar_bytes
from training.data.tar_shards import iter_tar_samples


def test_same_seed_same_bytes_other_seed_differs(pool_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    ec.generate_pool(again, CFG)
    assert tar_bytes(again) == tar_bytes(pool_dir)
    pd.testing.assert_frame_equal(
        pd.read_parquet(again / "metadata.parquet"), pd.read_parquet(pool_dir / "metadata.parquet")
    )

    other = tmp_path / "other"
    ec.generate_pool(other, CFG.model_copy(update={"seed": 4}))
    meta_a, meta_b = pd.read_parquet(pool_dir / "metadata.parquet"), pd.read_parquet(other / "metadata.parquet")
    assert not set(meta_a["uid"]) & set(meta_b["uid"])
    assert set(meta_a["sha256"]).isdisjoint(meta_b["sha256"])


def test_benchmark_deterministic_and_independent_of_pool_size(bench_dir: Path, tmp_path: Path) -> None:
    # Its own stream: a bigger pool or teacher corpus must not change the held-out set.
    again = tmp_path / "bench"
    ec.generate_benchmark(again, CFG.model_copy(update={"pool_size": 7, "teacher_corpus_size": 5}))
    assert tar_bytes(again) == tar_bytes(bench_dir)


def test_streams_differ_between_parts(pool_dir: Path, bench_dir: Path, tmp_path: Path) -> None:
    streams = (POOL_STREAM, TEACHER_STREAM, BENCHMARK_STREAM)
    assert len(set(streams)) == 3
    first_draws = {tuple(stream_rng(CFG.seed, s).integers(0, 2**31, size=4)) for s in streams}
    assert len(first_draws) == 3
    ec.generate_teacher_corpus(tmp_path / "shards", CFG, relative_to=tmp_path)
    # Resizing the pool or the benchmark leaves the teacher corpus byte-identical.
    ec.generate_teacher_corpus(
        tmp_path / "again" / "shards",
        CFG.model_copy(update={"pool_size": 3, "benchmark_size": 2}),
        relative_to=tmp_path,
    )
    assert tar_bytes(tmp_path / "again") == {k: v for k, v in tar_bytes(tmp_path).items() if "again" not in k}
    teacher_hashes = {
        hashlib.sha256(s["jpg"]).hexdigest()
        for t in (tmp_path / "shards").glob("*.tar")
        for _, s in iter_tar_samples(t)
    }
    pool_hashes = set(pd.read_parquet(pool_dir / "metadata.parquet")["sha256"])
    bench_hashes = {hashlib.sha256(s["jpg"]).hexdigest() for _, s in iter_tar_samples(bench_dir / "shape/test/0.tar")}
    assert len(teacher_hashes) == CFG.teacher_corpus_size
    assert teacher_hashes.isdisjoint(pool_hashes)
    assert teacher_hashes.isdisjoint(bench_hashes)
