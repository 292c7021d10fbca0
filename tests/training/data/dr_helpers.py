"""Hand-written DataCompDR shards for the loader tests (no teachers needed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from tests.conftest import aug_settings
from training.data.augment import sample_aug_params
from training.data.dr_format import DRMeta, DRSample, DRShardWriter, encode_sample, write_shard

A, S, DIMS = 4, 3, (8, 4)
D = sum(DIMS)
CONTEXT = 16


def tokenizer(texts: list[str]) -> torch.Tensor:
    return open_clip.tokenize(texts, context_length=CONTEXT)


def jpg_bytes(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def dr_sample(k: int, **overrides: object) -> DRSample:
    rng = np.random.default_rng(100 + k)
    width, height = 40 + 3 * k, 36 + 2 * k
    fields: dict[str, object] = dict(
        uid=f"{k:032x}",
        param_aug=[sample_aug_params(rng, width, height, **aug_settings()) for _ in range(A)],
        image_emb=rng.standard_normal((A, D)).astype(np.float32),
        text_emb=rng.standard_normal((1 + S, D)).astype(np.float32),
        syn_text=[f"synthetic caption {s} for sample {k}" for s in range(S)],
        sha256="0" * 64,
        jpg=jpg_bytes(width, height, k),
        txt=f"real caption of sample {k}",
    )
    fields.update(overrides)
    return DRSample.from_combined(**fields)


def write_stage_dir(root: Path) -> Path:
    """A reinforced_dataset folder: 6 usable samples over two shards, then 4 the loader must skip
    (no image, duplicate uid, NaN embedding, crop box outside the image)."""
    DRMeta(("t0", "t1"), DIMS, (100.0, 70.0), A, S, (64, 64)).write(root)
    write_shard(root / "shards" / "00000.tar", [dr_sample(k) for k in range(4)], embedding_format="npz")
    # Second shard: pth.gz embeddings, plus samples the loader must skip and count.
    with DRShardWriter(root / "shards" / "00001.tar", embedding_format="pth.gz") as writer:
        for k in range(4, 6):
            writer.write(dr_sample(k))
        writer.write(dr_sample(6, jpg=None))  # released-DataCompDR style: no image
        writer.write(dr_sample(0))  # duplicate uid
        # A sample whose embeddings hold NaN, written member by member (the writer refuses it).
        good = dr_sample(8)
        encoded = encode_sample(good, embedding_format="npz")
        emb = good.image_emb.copy()
        emb[0, 0] = np.nan
        buffer = io.BytesIO()
        np.savez(buffer, image_emb=emb, text_emb=good.text_emb)
        encoded["npz"] = buffer.getvalue()
        for ext, data in encoded.items():
            writer.write_member(f"nan000000.{ext}", data)
        # A crop box outside its (40 + 27) x (36 + 18) image.
        out_of_bounds = dr_sample(9, param_aug=[[[0, 0, 500, 500], []]] * A)
        writer.write(out_of_bounds)
    return root
