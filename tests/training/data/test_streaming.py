"""The streaming loader (webdataset) against the in-memory dataset, over the same shards."""

from __future__ import annotations

import shutil
import tracemalloc
import zlib
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch

from tests.training.data.dr_helpers import A, D, dr_sample, tokenizer, write_stage_dir
from training.data.augment import replay_aug
from training.data.dr_format import DRMeta, write_shard
from training.data.reinforced import ReinforcedDataset
from training.data.streaming import DAMAGED_SHARD, SKIPPED_KEY, StreamingReinforced, read_meta, shard_urls

USABLE = 6  # write_stage_dir's usable samples; 4 more are skipped by reason


@pytest.fixture(scope="module")
def stage_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_stage_dir(tmp_path_factory.mktemp("stream"))


def stream_of(folder: Path | str, batch_size: int = 2, **kw: object) -> StreamingReinforced:
    options = kw.pop("storage_options", {})
    return StreamingReinforced(
        shard_urls(folder, options), read_meta(folder, options), tokenizer, 32, batch_size,
        storage_options=options, **kw,
    )  # fmt: skip


def uid_of(index: torch.Tensor, uids: list[str]) -> str:
    by_crc = {zlib.crc32(uid.encode()): uid for uid in uids}
    return by_crc[int(index)]


def test_one_epoch_is_every_usable_sample_once_with_its_stored_targets(stage_dir: Path) -> None:
    memory = ReinforcedDataset.from_stage_dir(stage_dir, tokenizer, image_size=32)
    stream = stream_of(stage_dir, batch_size=1, shuffle_buffer=4, seed=3)
    entries = list(stream.epoch_batches(0))
    batches = [b for b in entries if "index" in b]
    # Duplicate-uid detection needs the whole dataset: a stream does not dedupe (the
    # reinforced_dataset gate refuses duplicate uids before any trainer reads them).
    seen = [uid_of(b["index"][0], memory.uids) for b in batches]
    assert sorted(seen) == sorted([*memory.uids, memory.uids[0]])
    skipped: dict[str, int] = {}
    for b in entries:
        for reason, count in b[SKIPPED_KEY].items():
            skipped[reason] = skipped.get(reason, 0) + count
    assert skipped == {"bad_param_aug": 1, "missing_image": 1, "nonfinite_embedding": 1}
    for b, uid in zip(batches, seen, strict=True):
        source = dr_sample(int(uid, 16))
        i = memory.uids.index(uid)  # the same sample decoded by the in-memory dataset

        def same(x: torch.Tensor, y: object) -> bool:
            # The duplicate uid's copy is stored in bfloat16 (pth.gz), its first in float32.
            return torch.allclose(x, torch.from_numpy(y), rtol=1e-2, atol=1e-2)  # type: ignore[arg-type]

        # The stored augmentation the view replays is the one whose embedding the item carries.
        rows = [a for a in range(A) if same(b["t_img"][0], memory._image_emb[i][a])]
        assert len(rows) == 1
        assert torch.equal(b["pixels"][0], replay_aug(memory._images[i], source.param_aug[rows[0]], 32))
        assert torch.equal(b["tokens_real"][0], tokenizer([source.txt])[0])
        s = [j for j, c in enumerate(source.captions) if torch.equal(tokenizer([c])[0], b["tokens_syn"][0])]
        assert len(s) == 1 and same(b["t_txt_syn"][0], memory._syn_emb[i][s[0]])
        assert same(b["t_txt_real"][0], memory._real_emb[i])
        assert b["t_img"].shape == (1, D)


def test_epochs_are_repeatable_shuffled_and_resumable(stage_dir: Path) -> None:
    def order(stream: StreamingReinforced, epoch: int, skip: int = 0) -> list[int]:
        return [int(i) for b in stream.epoch_batches(epoch, skip) if "index" in b for i in b["index"]]

    stream = stream_of(stage_dir, batch_size=2, shuffle_buffer=8, seed=1)
    first = order(stream, 0)
    assert len(first) == 6  # 7 items (the duplicate included) -> 3 full batches of 2
    assert order(stream, 0) == first
    assert order(stream, 0, skip=2) == first[4:]
    assert any(order(stream, e) != first for e in (1, 2, 3))
    assert order(stream_of(stage_dir, batch_size=2, shuffle_buffer=8, seed=2), 0) != first


def test_workers_share_the_shards_without_losing_or_doubling_any(stage_dir: Path) -> None:
    one = stream_of(stage_dir, batch_size=1, shuffle_buffer=0, shard_shuffle=False)
    two = stream_of(stage_dir, batch_size=1, shuffle_buffer=0, shard_shuffle=False, num_workers=2)
    indices = sorted(int(b["index"][0]) for b in one.epoch_batches(0) if "index" in b)
    assert sorted(int(b["index"][0]) for b in two.epoch_batches(0) if "index" in b) == indices
    with pytest.raises(ValueError, match="cannot feed 1 process"):
        next(stream_of(stage_dir, num_workers=3).epoch_batches(0))
    # Resampled: endless, drawn per worker, so three workers over two shards are fine.
    endless = stream_of(stage_dir, batch_size=2, resampled=True, num_workers=3).epoch_batches(0)
    assert len([next(endless) for _ in range(20)]) == 20


def test_damaged_and_missing_shards_are_counted_and_the_rest_stream(stage_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(stage_dir, tmp_path / "ds")
    data = (tmp_path / "ds" / "shards" / "00000.tar").read_bytes()
    (tmp_path / "ds" / "shards" / "00000.tar").write_bytes(data[: len(data) // 2])
    stream = stream_of(tmp_path / "ds", batch_size=1, shuffle_buffer=0)
    stream.urls = [*stream.urls, str(tmp_path / "ds" / "shards" / "gone.tar")]
    entries = list(stream.epoch_batches(0))
    skipped: dict[str, int] = {}
    for b in entries:
        for reason, count in b[SKIPPED_KEY].items():
            skipped[reason] = skipped.get(reason, 0) + count
    assert skipped[DAMAGED_SHARD] == 2  # the truncated shard and the missing one
    # Every usable sample of the intact shard arrives.
    arrived = {int(b["index"][0]) for b in entries if "index" in b}
    assert {zlib.crc32(f"{k:032x}".encode()) for k in (4, 5)} <= arrived


def test_streams_from_s3(stage_dir: Path, moto_s3: str) -> None:
    client = boto3.client("s3", endpoint_url=moto_s3)
    client.create_bucket(Bucket="dr-stream")
    for path in sorted(stage_dir.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), "dr-stream", f"v1/{path.relative_to(stage_dir).as_posix()}")
    options = {"endpoint_url": moto_s3}
    urls = shard_urls("s3://dr-stream/v1", options)
    assert urls == ["s3://dr-stream/v1/shards/00000.tar", "s3://dr-stream/v1/shards/00001.tar"]

    def indices(stream: StreamingReinforced) -> list[int]:
        return sorted(int(i) for b in stream.epoch_batches(0) if "index" in b for i in b["index"])

    assert indices(stream_of("s3://dr-stream/v1", batch_size=1, storage_options=options)) == indices(
        stream_of(stage_dir, 1)
    )


def _peak_bytes(make: object) -> int:
    tracemalloc.start()
    try:
        make()  # type: ignore[operator]
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_dataset(tmp_path: Path) -> None:
    """Eight times the shards: the in-memory dataset's peak grows with them, the stream's not."""
    dims = (256, 256)  # ViT-B-sized embeddings, so the data (not the interpreter) is what weighs
    meta = DRMeta(("t0", "t1"), dims, (100.0, 70.0), A, 3, (64, 64))
    rng = np.random.default_rng(0)
    for name, shards in (("small", 1), ("large", 8)):
        (tmp_path / name).mkdir()
        meta.write(tmp_path / name)
        for i in range(shards):
            # The same twelve images in every shard (dr_sample's size grows with k), new uids.
            samples = [
                dr_sample(
                    k,
                    uid=f"{i:04d}{k:028x}",
                    image_emb=rng.standard_normal((A, sum(dims))).astype(np.float32),
                    text_emb=rng.standard_normal((4, sum(dims))).astype(np.float32),
                )
                for k in range(12)
            ]
            write_shard(tmp_path / name / "shards" / f"{i:05d}.tar", samples, embedding_format="npz")

    def memory(name: str) -> int:
        return _peak_bytes(lambda: ReinforcedDataset.from_stage_dir(tmp_path / name, tokenizer, 32))

    def streamed(name: str) -> int:
        return _peak_bytes(lambda: sum(1 for _ in stream_of(tmp_path / name, 4, shuffle_buffer=8).epoch_batches(0)))

    # (tracemalloc sees the embeddings and tokens, not PIL's pixel buffers.)
    streamed("small")  # first use fills one-time caches (tokenizer, codecs)
    memory_growth = memory("large") - memory("small")
    stream_growth = streamed("large") - streamed("small")
    assert memory_growth > 7 * 12 * 8 * 512 * 4  # at least the 84 new samples' embeddings
    assert stream_growth < memory_growth / 10
