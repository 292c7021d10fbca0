"""Stage ``synthetic_captions``: S CoCa captions per filtered image (docs/method.md §2.3).

Every image of ``filtered_pool`` gets ``num_captions`` captions by nucleus sampling
(``top_p``, temperature 1, at most ``max_length`` tokens), decoded with start/end tokens
stripped and cut at the first period. Sampling is ``training.models.coca_sampling`` (key/value
cache, per-image seeds): an image's captions depend only on the captioner, the params and
its uid, so reruns and re-batching give the same captions.

Outputs (docs/stages.md): ``captions.parquet`` (``uid``, ``syn_text``), a per-uid manifest,
``previews/captions.png`` (images with their web caption and synthetic ones) and, when some
image cannot be decoded, ``skipped.parquet`` (``uid``, ``reason``); skips are counted in the
summary, never silent.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from clipforge.config import Params
from clipforge.gates.rules import FINITE_BOUND, Suite, between
from clipforge.stage_api import MANIFEST_FILE, StageContext, StageOutcome
from pipelines.pool.shards import Sample, ShardFormatError, open_rgb, read_samples
from pipelines.previews import image_grid
from training.models.coca_sampling import generate_captions
from training.models.open_clip_models import CAPTIONER_DIR, LoadedClip, load_model

CAPTIONS_FILE = "captions.parquet"
SKIPPED_FILE = "skipped.parquet"
PREVIEW_FILE = "previews/captions.png"
PREVIEW_IMAGES = 12
PREVIEW_SYNTHETIC = 3  # synthetic captions drawn per preview image (all S would not fit)


def quality_suite(params: Params) -> Suite:
    s = params.synthetic_captions.num_captions
    return Suite(
        required=("uid", "num_captions", "min_caption_chars", "mean_caption_words"),
        unique=(("uid",),),
        rules=(
            between("num_captions", s, s, statement=f"num_captions == {s} (synthetic_captions.num_captions)"),
            between("min_caption_chars", 0),
            between("mean_caption_words", 0, FINITE_BOUND),
        ),
    )


def caption_seed(seed: int, uid: str) -> int:
    """A 63-bit seed per (run seed, uid): an image's captions do not depend on its batch."""
    digest = hashlib.sha256(f"{seed}:{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _iter_filtered(folder: Path, manifest: pd.DataFrame) -> Iterator[tuple[str, Sample]]:
    """(uid, sample) for every manifest row, shard by shard, in manifest order of shards."""
    expected = manifest.groupby("shard", sort=False)["uid"].apply(set).to_dict()
    for shard, uids in expected.items():
        seen: set[str] = set()
        for sample in read_samples(folder / shard):
            uid = str(sample.meta.get("uid", ""))
            if uid in uids:
                seen.add(uid)
                yield uid, sample
        missing = uids - seen
        if missing:
            raise ShardFormatError(
                f"{folder / shard}: manifest lists {len(missing)} uid(s) the shard lacks, e.g. {sorted(missing)[:3]}"
            )


def caption_stats(captions: list[str]) -> dict[str, Any]:
    return {
        "num_captions": len(captions),
        "min_caption_chars": min(len(c) for c in captions),
        "mean_caption_words": float(np.mean([len(c.split()) for c in captions])),
    }


def run(ctx: StageContext) -> StageOutcome:
    cfg = ctx.params.synthetic_captions
    pool_dir = ctx.inputs["filtered_pool"]
    manifest = pd.read_parquet(pool_dir / MANIFEST_FILE, columns=["uid", "shard"])
    if manifest.empty:
        raise ValueError(f"filtered_pool at {pool_dir} has an empty manifest: nothing to caption")
    captioner: LoadedClip = load_model(ctx.inputs["captioner_model"] / CAPTIONER_DIR)
    if captioner.kind != "coca":
        raise ValueError(f"captioner_model holds a {captioner.kind!r} model, not a CoCa")
    max_length = min(cfg.max_length, captioner.context_length - 1)

    uids: list[str] = []
    syn: list[list[str]] = []
    skipped: list[dict[str, str]] = []
    preview: list[tuple[Image.Image, str]] = []
    caption_seconds = 0.0
    started = time.perf_counter()
    batch: list[tuple[str, Image.Image, str]] = []

    def flush() -> None:
        nonlocal caption_seconds
        if not batch:
            return
        t0 = time.perf_counter()
        texts = generate_captions(
            captioner,
            [img for _, img, _ in batch],
            num_captions=cfg.num_captions,
            top_p=cfg.top_p,
            max_length=max_length,
            seeds=[caption_seed(cfg.seed, uid) for uid, _, _ in batch],
        )
        caption_seconds += time.perf_counter() - t0
        uids.extend(uid for uid, _, _ in batch)
        syn.extend(texts)
        batch.clear()

    for uid, sample in ctx.progress(_iter_filtered(pool_dir, manifest), "caption", total=len(manifest)):
        try:
            image = open_rgb(sample.jpg)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            skipped.append({"uid": uid, "reason": f"undecodable image ({type(err).__name__})"})
            continue
        if len(preview) < PREVIEW_IMAGES:
            preview.append((image, sample.txt))
        batch.append((uid, image, sample.txt))
        if len(batch) >= cfg.batch_size:
            flush()
    flush()
    total_seconds = time.perf_counter() - started
    if not uids:
        raise ValueError(f"no image of filtered_pool could be captioned ({len(skipped)} skipped)")

    out = ctx.out_dir
    pd.DataFrame({"uid": uids, "syn_text": syn}).to_parquet(out / CAPTIONS_FILE, index=False)
    if skipped:
        pd.DataFrame(skipped).to_parquet(out / SKIPPED_FILE, index=False)
    rows = [{"uid": uid, **caption_stats(caps)} for uid, caps in zip(uids, syn, strict=True)]

    previews: dict[str, str] = {}
    if preview:
        cells = [[f"web: {txt}", *syn[i][:PREVIEW_SYNTHETIC]] for i, (_, txt) in enumerate(preview)]
        image_grid([img for img, _ in preview], cells, out / PREVIEW_FILE, cols=4)
        previews["captions"] = PREVIEW_FILE

    flat = [c for caps in syn for c in caps]
    num_captions = len(flat)
    words = [len(c.split()) for c in flat]
    metrics = {
        "captioned_images": float(len(uids)),
        "skipped_images": float(len(skipped)),
        "captions_per_second": num_captions / max(caption_seconds, 1e-9),
        "caption_seconds": caption_seconds,
        "mean_caption_words": float(np.mean(words)),
        "empty_captions": float(sum(1 for c in flat if not c)),
        # How varied the S samples of one image are: 1.0 means all S differ.
        "distinct_per_image": float(np.mean([len(set(caps)) / len(caps) for caps in syn])),
    }
    summary = {
        "captioned": len(uids),
        "skipped": len(skipped),
        "skip_reasons": dict(Counter(s["reason"] for s in skipped)),
        "num_captions": cfg.num_captions,
        "top_p": cfg.top_p,
        "max_length": max_length,
        "seconds": round(total_seconds, 2),
        "captions_per_second": round(metrics["captions_per_second"], 1),
        "examples": [{"uid": uids[i], "syn_text": syn[i]} for i in range(min(5, len(uids)))],
    }
    return StageOutcome(manifest=pd.DataFrame(rows), summary=summary, metrics=metrics, previews=previews)
