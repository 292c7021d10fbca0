"""The ``reinforced_dataset`` stage: stored augmentations plus teacher-ensemble embeddings.

For every filtered sample that has synthetic captions (docs/method.md §2.4-2.6):

1. draw A = ``num_augmentations`` augmentation records from a generator seeded by
   ``(seed, sha256(uid))`` only, so reruns, other shardings and other orders give the same ones;
2. replay each record at every teacher's resolution, encode with every teacher (batched),
   L2-normalise each teacher's output and concatenate: ``image_emb`` [A, sum D_k];
3. encode the real caption then the S synthetic captions with every teacher, each with its own
   tokenizer: ``text_emb`` [1 + S, sum D_k];
4. write DataCompDR shards (``training.data.dr_format``) of ``shard_size`` samples, ``dr_meta.json``,
   a per-sample manifest (docs/stages.md) and a preview grid of replayed augmentations.

Samples without an image, a caption, a uid or enough synthetic captions are skipped and counted
by reason in the summary.
"""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from clipforge.config import Params
from clipforge.gates.rules import FINITE_BOUND, Suite, all_true, between, positive
from clipforge.stage_api import MANIFEST_FILE, StageContext, StageOutcome
from pipelines.pool.reinforcement import CaptionedSample, augmentations_for, encode_chunk
from pipelines.pool.shards import POOL_SHARDS_DIR
from pipelines.synthetic_captions import CAPTIONS_FILE
from training.data.augment import replay_many
from training.data.dr_format import DR_META_FILE, DR_SHARDS_DIR, DRMeta, DRSample, encode_sample
from training.data.tar_shards import IMAGE_EXTS, ShardWriter, iter_tar_samples
from training.models.open_clip_models import load_teachers

PREVIEW_FILE = "previews/augmentations.png"


REINFORCED_COLUMNS: tuple[str, ...] = (
    "uid",
    "key",
    "shard",
    "num_augs",
    "num_syn",
    "emb_dim",
    "embeddings_finite",
    "image_emb_norm",
    "text_emb_norm",
)


def quality_suite(params: Params) -> Suite:
    a = params.reinforced_dataset.num_augmentations
    s = params.synthetic_captions.num_captions
    return Suite(
        required=REINFORCED_COLUMNS,
        unique=(("uid",),),
        rules=(
            between("num_augs", a, a, statement=f"num_augs == {a} (reinforced_dataset.num_augmentations)"),
            between("num_syn", s, s, statement=f"num_syn == {s} (synthetic_captions.num_captions)"),
            positive("emb_dim"),
            all_true("embeddings_finite"),
            between("image_emb_norm", 0, FINITE_BOUND, strict_min=True, statement="image_emb_norm is finite and > 0"),
            between("text_emb_norm", 0, FINITE_BOUND, strict_min=True, statement="text_emb_norm is finite and > 0"),
        ),
    )


class _Skip(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _load_captions(path: Path) -> tuple[dict[str, list[str] | None], int]:
    """uid -> synthetic captions (None when the row is malformed); also the duplicate-uid count."""
    if not path.is_file():
        raise FileNotFoundError(f"synthetic_captions output has no {path.name}: {path}")
    frame = pd.read_parquet(path, columns=["uid", "syn_text"])
    out: dict[str, list[str] | None] = {}
    duplicates = 0
    for uid, captions in zip(frame["uid"], frame["syn_text"], strict=True):
        if uid in out:
            duplicates += 1
            continue
        if captions is None or isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            out[str(uid)] = None
        else:
            out[str(uid)] = [str(c) for c in captions]
    return out, duplicates


def _parse_pool_sample(
    key: str, members: dict[str, bytes], captions: dict[str, list[str] | None], num_captions: int
) -> tuple[CaptionedSample, bool]:
    """A usable pool sample, or :class:`_Skip`; the flag says its captions were truncated to S."""
    if "json" not in members:
        raise _Skip("missing_json")
    try:
        meta = json.loads(members["json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Skip("bad_json") from None
    uid = meta.get("uid") if isinstance(meta, dict) else None
    if not isinstance(uid, str) or not uid:
        raise _Skip("missing_uid")
    if uid not in captions:
        raise _Skip("missing_synthetic_captions")
    syn = captions[uid]
    if syn is None:
        raise _Skip("bad_synthetic_captions")
    if len(syn) < num_captions:
        raise _Skip("too_few_synthetic_captions")
    jpg = next((members[ext] for ext in IMAGE_EXTS if ext in members), None)
    if jpg is None:
        raise _Skip("missing_image")
    try:
        image = Image.open(io.BytesIO(jpg))
        image = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        raise _Skip("bad_image") from None
    if "txt" in members:
        try:
            caption = members["txt"].decode("utf-8")
        except UnicodeDecodeError:
            raise _Skip("bad_caption") from None
    elif isinstance(meta.get("caption"), str):
        caption = meta["caption"]
    else:
        raise _Skip("missing_caption")
    sample = CaptionedSample(
        key=key,
        uid=uid,
        sha256=meta.get("sha256"),
        url=str(meta.get("url") or ""),
        caption=caption,
        jpg=jpg,
        image=image,
        syn_text=syn[:num_captions],
    )
    return sample, len(syn) > num_captions


def _iter_pool(shards: Sequence[Path]) -> Iterator[tuple[str, dict[str, bytes]]]:
    for shard in shards:
        yield from iter_tar_samples(shard)


def _save_preview(out_dir: Path, grid: list[torch.Tensor], num_augs: int) -> str | None:
    if not grid:
        return None
    from torchvision.utils import save_image

    path = out_dir / PREVIEW_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat(grid), path, nrow=num_augs, padding=2)
    return PREVIEW_FILE


def run(ctx: StageContext) -> StageOutcome:
    cfg = ctx.params.reinforced_dataset
    num_captions = ctx.params.synthetic_captions.num_captions
    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"

    teachers = load_teachers(ctx.inputs["teacher_models"], device=device)
    captions, duplicate_caption_uids = _load_captions(ctx.inputs["synthetic_captions"] / CAPTIONS_FILE)
    pool_dir = ctx.inputs["filtered_pool"]
    shards_in = sorted((pool_dir / POOL_SHARDS_DIR).glob("*.tar"))
    if not shards_in:
        raise FileNotFoundError(f"filtered_pool has no shards under {pool_dir / POOL_SHARDS_DIR}")
    pool_manifest = pool_dir / MANIFEST_FILE
    total = len(pd.read_parquet(pool_manifest, columns=["uid"])) if pool_manifest.is_file() else None

    meta = DRMeta(
        teachers=tuple(t.name for t in teachers),
        teacher_dims=tuple(t.embed_dim for t in teachers),
        logit_scales=tuple(float(t.logit_scale) for t in teachers),
        num_augmentations=cfg.num_augmentations,
        num_captions=num_captions,
        image_sizes=tuple(t.image_size for t in teachers),
        embedding_format=cfg.embedding_format,
    )
    shard_dir = ctx.out_dir / DR_SHARDS_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(shard_dir, ctx.out_dir, max_count=cfg.shard_size)
    # Samples per encoder pass: about batch_size augmented images per teacher forward.
    chunk_size = max(1, cfg.batch_size // cfg.num_augmentations)

    skipped: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    seen_uids: set[str] = set()
    truncated = 0
    preview: list[torch.Tensor] = []

    def write(sample: CaptionedSample, params: list[list[Any]], image_emb: np.ndarray, text_emb: np.ndarray) -> None:
        if not (np.isfinite(image_emb).all() and np.isfinite(text_emb).all()):
            skipped["nonfinite_embedding"] += 1
            return
        dr = DRSample.from_combined(
            uid=sample.uid,
            param_aug=params,
            image_emb=image_emb,
            text_emb=text_emb,
            syn_text=sample.syn_text,
            sha256=sample.sha256,
            url=sample.url,
            key=f"{len(rows):09d}",
            jpg=sample.jpg if cfg.include_images else None,
            txt=sample.caption if cfg.include_images else None,
        )
        shard = writer.write(dr.key, encode_sample(dr, embedding_format=cfg.embedding_format))
        rows.append(
            {
                "uid": sample.uid,
                "key": dr.key,
                "shard": shard,
                "num_augs": image_emb.shape[0],
                "num_syn": len(sample.syn_text),
                "emb_dim": image_emb.shape[1],
                "embeddings_finite": True,
                "image_emb_norm": float(np.linalg.norm(image_emb, axis=1).mean()),
                "text_emb_norm": float(np.linalg.norm(text_emb, axis=1).mean()),
            }
        )

    def flush(chunk: list[tuple[CaptionedSample, list[list[Any]]]]) -> None:
        if not chunk:
            return
        samples = [s for s, _ in chunk]
        params = [p for _, p in chunk]
        image_emb, text_emb = encode_chunk(samples, params, teachers, cfg.batch_size, device)
        if image_emb.shape[-1] != meta.emb_dim or text_emb.shape[-1] != meta.emb_dim:
            raise RuntimeError(f"teachers produced {image_emb.shape[-1]}-d embeddings, expected {meta.emb_dim}")
        for k, (sample, p) in enumerate(chunk):
            write(sample, p, image_emb[k], text_emb[k])
        if len(preview) < 4:
            preview.extend(replay_many(s.image, p[:8], teachers[0].image_size) for s, p in chunk[: 4 - len(preview)])
        chunk.clear()

    chunk: list[tuple[CaptionedSample, list[list[Any]]]] = []
    try:
        for key, members in ctx.progress(_iter_pool(shards_in), "teacher embeddings", total=total):
            try:
                sample, was_truncated = _parse_pool_sample(key, members, captions, num_captions)
            except _Skip as skip:
                skipped[skip.reason] += 1
                continue
            if sample.uid in seen_uids:
                skipped["duplicate_uid"] += 1
                continue
            seen_uids.add(sample.uid)
            truncated += int(was_truncated)
            params = augmentations_for(sample.uid, sample.image.width, sample.image.height, cfg)
            chunk.append((sample, params))
            if len(chunk) >= chunk_size:
                flush(chunk)
        flush(chunk)
    finally:
        writer.close()

    meta.write(ctx.out_dir / DR_META_FILE)
    seconds = time.perf_counter() - started
    preview_rel = _save_preview(ctx.out_dir, preview, min(8, cfg.num_augmentations))
    manifest = pd.DataFrame(rows, columns=list(REINFORCED_COLUMNS))
    n = len(manifest)
    summary: dict[str, Any] = {
        "samples": n,
        "shards": len(writer.shards),
        "skipped": dict(sorted(skipped.items())),
        "skipped_total": int(sum(skipped.values())),
        "truncated_synthetic_captions": truncated,
        "duplicate_caption_uids": duplicate_caption_uids,
        # Caption rows whose uid got no shard row (absent from the pool, or that sample skipped).
        "captions_unused": len(set(captions) - set(manifest["uid"])),
        "teachers": list(meta.teachers),
        "teacher_dims": list(meta.teacher_dims),
        "emb_dim": meta.emb_dim,
        "num_augmentations": cfg.num_augmentations,
        "num_captions": num_captions,
        "embedding_format": cfg.embedding_format,
        "include_images": cfg.include_images,
        "device": device,
    }
    metrics = {
        "samples": float(n),
        "skipped": float(summary["skipped_total"]),
        "samples_per_second": n / seconds if seconds > 0 else 0.0,
        "image_emb_norm_mean": float(manifest["image_emb_norm"].mean()) if n else float("nan"),
    }
    previews = {"augmentations": preview_rel} if preview_rel else {}
    return StageOutcome(manifest=manifest, summary=summary, metrics=metrics, previews=previews)
