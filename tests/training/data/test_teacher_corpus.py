"""The teacher corpus in memory: decoding with counted skips, batched crops, the held-out split."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

from tests.training.corpus_helpers import write_corpus
from training.data.embedded_layout import TEACHER_SHARDS_DIR
from training.data.teacher_corpus import holdout_split, random_resized_crop, read_corpus


def test_read_corpus_decodes_and_counts_skips(tmp_path: Path) -> None:
    root = write_corpus(tmp_path / "corpus", n=10, bad=True)
    corpus = read_corpus(root / TEACHER_SHARDS_DIR, 48)
    assert len(corpus) == 10 and corpus.images.shape == (10, 3, 48, 48) and corpus.images.dtype == torch.uint8
    assert corpus.captions[0] == "a red square on a grey background"
    assert dict(corpus.skipped) == {"undecodable image": 1, "missing image or caption": 1, "empty caption": 1}
    with pytest.raises(FileNotFoundError, match="no teacher corpus shards"):
        read_corpus(tmp_path / "nowhere", 48)


def test_random_resized_crop_is_seeded_and_keeps_content() -> None:
    images = torch.zeros(4, 3, 48, 48, dtype=torch.uint8)
    images[:, 0] = 255  # pure red
    a = random_resized_crop(images, 32, torch.Generator().manual_seed(0))
    assert a.shape == (4, 3, 32, 32) and torch.allclose(a[:, 0], torch.ones(4, 32, 32), atol=1e-5)
    assert float(a[:, 1:].abs().max()) < 1e-6
    split = torch.zeros(64, 3, 48, 48, dtype=torch.uint8)
    split[..., 24:] = 255  # left half black, right half white: crops see different parts
    b1 = random_resized_crop(split, 32, torch.Generator().manual_seed(1), scale=(0.5, 1.0))
    b2 = random_resized_crop(split, 32, torch.Generator().manual_seed(1), scale=(0.5, 1.0))
    assert torch.equal(b1, b2)
    means = b1.mean(dim=(1, 2, 3))
    assert float(means.std()) > 0.05  # crops differ in position and size
    assert float(b1.min()) >= 0.0 and float(b1.max()) <= 1.0


def test_holdout_split_is_disjoint_and_seeded() -> None:
    train, held = holdout_split(200, 0.05, seed=3)
    assert len(held) == 10 and len(train) == 190
    assert set(train.tolist()).isdisjoint(held.tolist()) and len(set(train.tolist()) | set(held.tolist())) == 200
    assert torch.equal(held, holdout_split(200, 0.05, seed=3)[1])
    assert not torch.equal(held, holdout_split(200, 0.05, seed=4)[1])


def test_hard_negatives_are_used_only_when_every_sample_has_them(tmp_path: Path) -> None:
    root = write_corpus(tmp_path / "c", n=6, negatives=True)
    shard = root / TEACHER_SHARDS_DIR / "00000.tar"
    complete = read_corpus(shard.parent, 32)
    assert complete.caption_lines[0] == ["a red square on a grey background", "a red thing"]
    assert complete.negatives[0] == ["a green square on a grey background", "a green thing"]
    assert complete.captions[0] == "a red square on a grey background"  # the full line
    # Rewrite the shard without one sample's negatives: none are used, and that is reported.
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(shard, "w") as tar:
        for info, data in members:
            if info.name != "000002.neg.txt":
                tar.addfile(info, io.BytesIO(data))
    partial = read_corpus(shard.parent, 32)
    assert partial.negatives == [] and partial.negatives_missing == 1
