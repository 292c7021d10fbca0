"""The reinforced data loader the student trainer reads (docs/method.md §2.7).

Each item is one image with one of its stored augmentations replayed at the student's
resolution, its real caption, one synthetic caption, and the teacher-ensemble embeddings that
belong to exactly that view and those captions: the distillation target costs a lookup, no
teacher forward pass.

At the embedded scale every sample is decoded once into memory (PIL image, validated
augmentation records, embeddings, pre-tokenised captions); samples that cannot be used are
skipped and counted by reason in :attr:`ReinforcedDataset.skipped`.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from training.data.augment import AugParamsError, replay_aug, validate_params
from training.data.dr_format import DR_META_FILE, DR_SHARDS_DIR, DRMeta, DRSample, DRSampleError, decode_sample
from training.data.tar_shards import iter_tar_samples

Tokenizer = Callable[[list[str]], torch.Tensor]
_TOKENIZE_CHUNK = 1024


def find_meta(shard_paths: Sequence[Path]) -> DRMeta:
    """``dr_meta.json`` beside the shards or one folder up (``<stage>/shards/*.tar``)."""
    first = Path(shard_paths[0])
    for folder in (first.parent, first.parent.parent):
        if (folder / DR_META_FILE).is_file():
            return DRMeta.read(folder / DR_META_FILE)
    raise FileNotFoundError(
        f"no {DR_META_FILE} beside {first} or one folder up; pass meta= (released DataCompDR has none)"
    )


def _tokenize_all(tokenizer: Tokenizer, texts: list[str]) -> torch.Tensor:
    """[len(texts), L] token ids, tokenised in chunks."""
    parts = [tokenizer(texts[i : i + _TOKENIZE_CHUNK]) for i in range(0, len(texts), _TOKENIZE_CHUNK)]
    return torch.cat(parts).long()


# Item keys for teachers run online (suffixed with the teacher's index k).
TEACHER_TOKENS_REAL = "t_tokens_real/"
TEACHER_TOKENS_SYN = "t_tokens_syn/"
TEACHER_PIXELS = "t_pixels/"


def usable_sample(key: str, members: dict[str, bytes], emb_dim: int) -> tuple[DRSample, Image.Image]:
    """One tar sample decoded for training: the DRSample and its RGB image.

    The one rule for what a trainer can use, shared by the in-memory dataset and the stream:
    raises :class:`DRSampleError` whose ``reason`` names the skip (bad embeddings, no image,
    no caption, an undecodable image, augmentation records that do not fit the image).
    """
    sample = decode_sample(key, members, expected_dim=emb_dim)
    if sample.jpg is None:
        raise DRSampleError("missing_image", f"{key}: no image member")
    if sample.txt is None:
        raise DRSampleError("missing_caption", f"{key}: no caption member")
    try:
        image = Image.open(io.BytesIO(sample.jpg)).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DRSampleError("bad_image", f"{key}: {exc}") from exc
    try:
        for record in sample.param_aug:
            validate_params(record, image.width, image.height)
    except AugParamsError as exc:
        raise DRSampleError("bad_param_aug", f"{key}: {exc}") from exc
    return sample, image


def training_item(
    image: Image.Image,
    record: Any,
    image_size: int,
    *,
    tokens_real: torch.Tensor,
    tokens_syn: torch.Tensor,
    t_img: np.ndarray,
    t_txt_real: np.ndarray,
    t_txt_syn: np.ndarray,
    index: int,
    online: Sequence[tuple[int, torch.Tensor, torch.Tensor]] = (),
) -> dict[str, torch.Tensor]:
    """One trainer item (the layout :class:`ReinforcedDataset` documents) from a chosen stored
    augmentation ``record`` and synthetic caption; ``online`` holds, per teacher run during
    training, (its image size, its tokens of the real and of the synthetic caption)."""
    item: dict[str, torch.Tensor] = {}
    for k, (size, teacher_real, teacher_syn) in enumerate(online):
        item[f"{TEACHER_TOKENS_REAL}{k}"] = teacher_real
        item[f"{TEACHER_TOKENS_SYN}{k}"] = teacher_syn
        if size != image_size:
            item[f"{TEACHER_PIXELS}{k}"] = replay_aug(image, record, size)
    item.update(
        pixels=replay_aug(image, record, image_size),
        tokens_real=tokens_real,
        tokens_syn=tokens_syn,
        t_img=torch.from_numpy(np.array(t_img, dtype=np.float32)),
        t_txt_real=torch.from_numpy(np.array(t_txt_real, dtype=np.float32)),
        t_txt_syn=torch.from_numpy(np.array(t_txt_syn, dtype=np.float32)),
        index=torch.tensor(index, dtype=torch.long),
    )
    return item


class ReinforcedDataset(Dataset):
    """Map-style dataset over DataCompDR shards that carry ``jpg`` and ``txt``.

    ``__getitem__(i)`` draws, from a generator seeded by (seed, epoch, i), one stored
    augmentation ``a`` and one synthetic caption ``s`` and returns:

    - ``pixels`` [3, S, S] float in [0, 1]: augmentation ``a`` replayed at ``image_size``;
    - ``tokens_real`` [L], ``tokens_syn`` [L]: the real and the chosen synthetic caption;
    - ``t_img`` [D]: ``image_emb[a]``; ``t_txt_real`` [D]: ``text_emb[0]``;
      ``t_txt_syn`` [D]: the synthetic caption's row (``text_emb[1 + s]`` in the combined layout);
    - ``index``: ``i``.
    """

    def __init__(
        self,
        shard_paths: Sequence[Path],
        tokenizer: Tokenizer,
        image_size: int,
        seed: int = 0,
        *,
        meta: DRMeta | None = None,
        teacher_inputs: Sequence[tuple[Tokenizer, int]] = (),
    ) -> None:
        if not shard_paths:
            raise ValueError("ReinforcedDataset needs at least one shard")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.shard_paths = [Path(p) for p in shard_paths]
        self.image_size = int(image_size)
        self.seed = int(seed)
        self.epoch = 0
        self.meta = meta if meta is not None else find_meta(self.shard_paths)
        skipped: Counter[str] = Counter()

        self.uids: list[str] = []
        self._images: list[Image.Image] = []
        self._params: list[list[Any]] = []
        self._image_emb: list[np.ndarray] = []  # each [A_i, D]
        self._real_emb: list[np.ndarray] = []  # each [D]
        self._syn_emb: list[np.ndarray] = []  # each [S_i, D]
        real_texts: list[str] = []
        syn_texts: list[list[str]] = []
        seen: set[str] = set()
        for shard in self.shard_paths:
            for key, members in iter_tar_samples(shard):
                try:
                    sample, image = usable_sample(key, members, self.meta.emb_dim)
                except DRSampleError as exc:
                    skipped[exc.reason] += 1
                    continue
                if sample.uid in seen:
                    skipped["duplicate_uid"] += 1
                    continue
                seen.add(sample.uid)
                self.uids.append(sample.uid)
                self._images.append(image)
                self._params.append(sample.param_aug)
                self._image_emb.append(sample.image_emb)
                self._real_emb.append(sample.real_emb[0])
                self._syn_emb.append(sample.syn_text_emb)
                real_texts.append(sample.txt)
                syn_texts.append(sample.captions)
        self.skipped: dict[str, int] = dict(sorted(skipped.items()))
        if not self.uids:
            raise ValueError(f"no usable samples in {len(self.shard_paths)} shard(s); skipped: {self.skipped}")

        # Tokenise once: real captions [N, L]; synthetic ones flattened [sum S_i, L] with offsets.
        self._tokens_real = _tokenize_all(tokenizer, real_texts)
        flat = [c for captions in syn_texts for c in captions]
        self._tokens_syn = _tokenize_all(tokenizer, flat)
        self._syn_offsets = np.cumsum([0] + [len(c) for c in syn_texts])
        # Teachers run online: per teacher k, its own tokens of the same captions and, where its
        # resolution differs from the student's, the same stored view replayed at its size.
        self.teacher_inputs = [
            (int(size), _tokenize_all(tok, real_texts), _tokenize_all(tok, flat)) for tok, size in teacher_inputs
        ]

    def __len__(self) -> int:
        return len(self.uids)

    def set_epoch(self, epoch: int) -> None:
        """Change which augmentation and caption each index draws (deterministic per epoch)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def choice(self, index: int) -> tuple[int, int]:
        """(augmentation, synthetic caption) drawn for ``index`` in the current epoch."""
        rng = np.random.default_rng([self.seed % 2**64, self.epoch, index])
        a = int(rng.integers(len(self._params[index])))
        s = int(rng.integers(self._syn_emb[index].shape[0]))
        return a, s

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside [0, {len(self)})")
        a, s = self.choice(index)
        syn_row = int(self._syn_offsets[index]) + s
        return training_item(
            self._images[index],
            self._params[index][a],
            self.image_size,
            tokens_real=self._tokens_real[index],
            tokens_syn=self._tokens_syn[syn_row],
            t_img=self._image_emb[index][a],
            t_txt_real=self._real_emb[index],
            t_txt_syn=self._syn_emb[index][s],
            index=index,
            online=[(size, real[index], syn[syn_row]) for size, real, syn in self.teacher_inputs],
        )

    @classmethod
    def from_stage_dir(
        cls,
        folder: Path,
        tokenizer: Tokenizer,
        image_size: int,
        seed: int = 0,
        teacher_inputs: Sequence[tuple[Tokenizer, int]] = (),
    ) -> ReinforcedDataset:
        """All shards of a published ``reinforced_dataset`` folder, with its ``dr_meta.json``."""
        folder = Path(folder)
        shards = sorted((folder / DR_SHARDS_DIR).glob("*.tar"))
        if not shards:
            raise FileNotFoundError(f"no shards under {folder / DR_SHARDS_DIR}")
        meta = DRMeta.read(folder / DR_META_FILE)
        return cls(shards, tokenizer, image_size, seed, meta=meta, teacher_inputs=teacher_inputs)


def collate(batch: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack a list of items into a batch: every field gets a leading [B] dimension."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    return {name: torch.stack([item[name] for item in batch]) for name in batch[0]}
