"""The streaming reinforced loader: DataCompDR shards read as a webdataset pipeline, so memory
does not grow with the dataset (docs/method.md §2.7 for the item layout).

Stages, all webdataset's except where said:

    shard list (local paths or s3:// URLs; resampled, or shuffled per epoch)
    -> split by node (rank) -> split by DataLoader worker
    -> open each shard with fsspec (ours: webdataset's own opener has no s3 scheme; fsspec is
       the project's storage layer and takes the lake's endpoint)
    -> tar members -> samples grouped by key
    -> shuffle buffer
    -> decode + augmentation replay + tokenise (ours: :func:`training_item`, the rule the
       in-memory dataset uses), unusable samples counted by reason
    -> batches of this rank's share, each carrying the skips met since the previous one.

Everything random (shard order, buffer, which stored augmentation and synthetic caption a sample
shows) is seeded by (seed, epoch, rank, worker), so an epoch's batches are the same on every
run with the same worker count: a resumed run skips the batches it already consumed.
"""

from __future__ import annotations

import json
import random
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset
from webdataset.tariterators import group_by_keys, tar_file_expander
from webdataset.utils import pytorch_worker_info

from training.data.dr_format import DR_META_FILE, DR_SHARDS_DIR, DRMeta, DRSampleError
from training.data.reinforced import Tokenizer, collate, training_item, usable_sample

# A batch's field with the skip counts ({reason: count}) the worker met since its last batch.
SKIPPED_KEY = "skipped"
# The reason counted when a shard cannot be opened or read to its end (truncated, missing).
DAMAGED_SHARD = "damaged_shard"


def shard_urls(source: str | Path, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Every ``*.tar`` of a reinforced_dataset folder (its ``shards/``) or of any folder/prefix,
    local or ``s3://``, sorted."""
    source = str(source).rstrip("/")
    fs, root = fsspec.core.url_to_fs(source, **(storage_options or {}))
    folder = f"{root}/{DR_SHARDS_DIR}" if fs.isdir(f"{root}/{DR_SHARDS_DIR}") else root
    paths = sorted(fs.glob(f"{folder}/*.tar"))
    if not paths:
        raise FileNotFoundError(f"no .tar shards under {source}")
    return [fs.unstrip_protocol(p) if source.startswith("s3://") else p for p in paths]


def read_meta(source: str | Path, storage_options: dict[str, Any] | None = None) -> DRMeta:
    """``dr_meta.json`` of a reinforced_dataset folder or prefix."""
    with fsspec.open(f"{str(source).rstrip('/')}/{DR_META_FILE}", "rb", **(storage_options or {})) as f:
        return DRMeta.from_dict(json.loads(f.read().decode("utf-8")))


class _SkipCounter:
    """A worker's skip counts: webdataset's exception handler for damaged shards (once per
    shard, though a truncated tar raises at every member after the cut) and the decoder's
    unusable samples; each batch takes (and clears) what was counted before it."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.current = ""  # the shard being read (the stages are generators in one thread)
        self._damaged: set[str] = set()

    def damaged(self, exc: Exception) -> bool:
        if self.current not in self._damaged:
            self._damaged.add(self.current)
            self.counts[DAMAGED_SHARD] += 1
        return True  # go on with the next member or shard

    def take(self) -> dict[str, int]:
        counts, self.counts = dict(self.counts), Counter()
        return counts


def _open_shards(urls: Iterable[dict[str, str]], storage_options: dict[str, Any], skips: _SkipCounter) -> Iterator:
    for sample in urls:
        skips.current = sample["url"]
        try:
            stream = fsspec.open(sample["url"], "rb", **storage_options).open()
        except Exception as exc:  # an unreachable shard is counted; the rest go on
            skips.damaged(exc)
            continue
        yield {**sample, "stream": stream}


@dataclass
class StreamingReinforced(IterableDataset):
    """DataCompDR shards as a stream of this rank's batches (each ``batch_size`` items).

    ``epoch_batches(epoch, skip)`` is what the trainer reads: one epoch (one pass over the
    shards, or an endless resampled stream when ``resampled``), the first ``skip`` batches
    left out. Memory holds the shuffle buffer, not the dataset.
    """

    urls: Sequence[str]
    meta: DRMeta
    tokenizer: Tokenizer
    image_size: int
    batch_size: int  # this rank's share of the global batch
    seed: int = 0
    shuffle_buffer: int = 1000
    shard_shuffle: bool = True
    resampled: bool = False
    num_workers: int = 0
    storage_options: dict[str, Any] = field(default_factory=dict)
    teacher_tokenizers: Sequence[tuple[Tokenizer, int]] = ()
    epoch: int = 0

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("the stream needs at least one shard")
        if self.batch_size < 1 or self.shuffle_buffer < 0:
            raise ValueError(
                f"batch_size must be >= 1 and shuffle_buffer >= 0, got {self.batch_size}, {self.shuffle_buffer}"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _split_seed(self) -> list[int]:
        """(seed, epoch, rank, worker): the stream's random state for this process and worker."""
        # webdataset's own reading of rank and worker, the one its splitters deal shards by.
        rank, _, worker, _ = pytorch_worker_info()
        return [self.seed % 2**32, self.epoch, rank, worker]

    def _shards(self, _: Any = None) -> Iterator[dict[str, str]]:
        urls = list(self.urls)
        if self.resampled:
            # Each rank and worker draws its own endless sequence (open_clip's --dataset-resampled).
            rng = random.Random(str(self._split_seed()))
            while True:
                yield {"url": rng.choice(urls)}
        if self.shard_shuffle:
            random.Random(str([self.seed, self.epoch])).shuffle(urls)  # the same order on every rank
        yield from ({"url": url} for url in urls)

    def _items(self, samples: Iterable[dict[str, Any]], skips: _SkipCounter) -> Iterator[dict[str, torch.Tensor]]:
        rng = np.random.default_rng(self._split_seed())
        for sample in samples:
            key = sample["__key__"]
            members = {k: v for k, v in sample.items() if not k.startswith("__")}
            try:
                dr, image = usable_sample(key, members, self.meta.emb_dim)
            except DRSampleError as exc:
                skips.counts[exc.reason] += 1
                continue
            a = int(rng.integers(len(dr.param_aug)))
            s = int(rng.integers(len(dr.captions)))
            real, syn = self.tokenizer([dr.txt, dr.captions[s]]).long()
            online = []
            for tokenizer, size in self.teacher_tokenizers:
                teacher_real, teacher_syn = tokenizer([dr.txt, dr.captions[s]]).long()
                online.append((size, teacher_real, teacher_syn))
            yield training_item(
                image,
                dr.param_aug[a],
                self.image_size,
                tokens_real=real,
                tokens_syn=syn,
                t_img=dr.image_emb[a],
                t_txt_real=dr.real_emb[0],
                t_txt_syn=dr.syn_text_emb[s],
                # A stable per-sample id (a stream has no index): the uid's CRC32.
                index=zlib.crc32(dr.uid.encode("utf-8")),
                online=online,
            )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """This worker's batches of the current epoch."""
        skips = _SkipCounter()
        pipeline = wds.DataPipeline(
            self._shards,
            wds.split_by_node,
            # A resampled stream is already drawn per worker; a shard list is dealt out.
            *([] if self.resampled else [wds.split_by_worker]),
            partial(_open_shards, storage_options=self.storage_options, skips=skips),
            partial(tar_file_expander, handler=skips.damaged),
            partial(group_by_keys, handler=skips.damaged),
            wds.shuffle(self.shuffle_buffer, rng=random.Random(str(self._split_seed()))),
        )
        batch: list[dict[str, torch.Tensor]] = []
        for item in self._items(pipeline, skips):
            batch.append(item)
            if len(batch) == self.batch_size:
                yield {**collate(batch), SKIPPED_KEY: skips.take()}
                batch = []
        # A short last batch is dropped (a contrastive batch must be full); its skips are not.
        if skips.counts:
            yield {SKIPPED_KEY: skips.take()}

    def epoch_batches(self, epoch: int, skip: int = 0) -> Iterator[dict[str, Any]]:
        """Epoch ``epoch``'s full batches after the first ``skip``, each with the skips met since
        the previous one; skips met after the last full batch come as a batch of
        ``{SKIPPED_KEY: ...}`` alone (not a training step)."""
        self.set_epoch(epoch)
        if not self.resampled:
            self._check_shards_cover_readers()
        loader = wds.WebLoader(self, batch_size=None, num_workers=self.num_workers)
        full = 0
        for batch in loader:
            if len(batch) > 1:
                full += 1
                if full <= skip:
                    # Consumed before the resume: its skips were counted by the earlier run.
                    continue
            yield batch

    def _check_shards_cover_readers(self) -> None:
        _, world, _, _ = pytorch_worker_info()
        readers = world * max(1, self.num_workers)
        if len(self.urls) < readers:
            raise ValueError(
                f"{len(self.urls)} shard(s) cannot feed {world} process(es) x {max(1, self.num_workers)} worker(s) "
                "without resampling: write more shards, use fewer workers, or set resampled"
            )
