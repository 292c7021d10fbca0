"""Stage ``filtered_pool``: DataComp's basic filter, then a CLIP-score filter (``pipelines.pool.filters``).

The CLIP score is computed for the basic filter's survivors only. Three passes over the pool's
shards keep memory flat: rules from the manifest alone, scoring in batches, then copying the
kept samples' members unchanged into new shards. Output layout: docs/stages.md,
``filtered_pool``.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from clipforge.config import Params
from clipforge.gates.rules import Suite, between, non_empty_text
from clipforge.stage_api import MANIFEST_FILE, StageContext, StageOutcome
from pipelines.datacomp_pool import POOL_COLUMNS, POOL_SCORE_COLUMNS, pool_rules
from pipelines.pool.filters import RULE_CLIP, RULES, basic_filter, ensemble_clip_scores, select_by_clip_score
from pipelines.pool.shards import POOL_SHARDS_DIR, Sample, ShardFormatError, open_rgb, read_samples
from pipelines.previews import image_grid
from training.data.tar_shards import ShardWriter
from training.models.open_clip_models import load_teachers

DROPPED_FILE = "dropped.parquet"
PREVIEW_COUNT = 16
PREVIEW_PER_RULE = 4


def quality_suite(params: Params) -> Suite:
    return Suite(
        required=(*POOL_COLUMNS, "clip_score"),
        nullable=POOL_SCORE_COLUMNS,
        unique=(("uid",),),
        rules=(*pool_rules(), between("clip_score", -1, 1), non_empty_text("text")),
    )


def _shard_order(manifest: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(manifest["shard"]))


def _iter_pool(pool_dir: Path, manifest: pd.DataFrame, shards: list[str]) -> Iterator[tuple[str, Sample]]:
    """(shard, sample) for every manifest row, shard by shard; a missing sample is an error."""
    by_shard = manifest.groupby("shard", sort=False)["key"].apply(set).to_dict()
    for shard in shards:
        expected = by_shard.get(shard, set())
        found = set()
        for sample in read_samples(pool_dir / shard):
            if sample.key in expected:
                found.add(sample.key)
                yield shard, sample
        if found != expected:
            missing = sorted(expected - found)[:5]
            raise ShardFormatError(f"{pool_dir / shard}: manifest lists samples the shard lacks, e.g. {missing}")


def _batches(items: Iterator[tuple[str, Sample]], size: int) -> Iterator[list[tuple[str, Sample]]]:
    batch: list[tuple[str, Sample]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_samples(
    ctx: StageContext, teachers: Sequence[Any], pool_dir: Path, candidates: pd.DataFrame, batch_size: int
) -> dict[str, float]:
    """uid -> ensemble CLIP score for every row of ``candidates`` (batched, with progress)."""
    scores: dict[str, float] = {}
    stream = _iter_pool(pool_dir, candidates, _shard_order(candidates))
    total = math.ceil(len(candidates) / batch_size)
    for batch in ctx.progress(_batches(stream, batch_size), "clip score batches", total=total):
        images = [open_rgb(sample.jpg) for _, sample in batch]
        captions = [sample.txt for _, sample in batch]
        values = ensemble_clip_scores(teachers, images, captions)
        for (_, sample), value in zip(batch, values, strict=True):
            scores[str(sample.meta["uid"])] = float(value)
    return scores


def _previews(
    out_dir: Path, kept: list[tuple[Image.Image, str]], dropped: list[tuple[Image.Image, str]]
) -> dict[str, str]:
    """Grids of kept and dropped samples (images with their caption or drop reason)."""
    previews: dict[str, str] = {}
    for label, items in (("kept", kept), ("dropped", dropped)):
        if not items:
            continue
        rel = f"previews/{label}.png"
        (out_dir / "previews").mkdir(exist_ok=True)
        image_grid([im for im, _ in items], [cap for _, cap in items], out_dir / rel, cols=4)
        previews[label] = rel
    return previews


def run(ctx: StageContext) -> StageOutcome:
    cfg = ctx.params.filtered_pool
    pool_dir = ctx.inputs["datacomp_pool"]
    pool = pd.read_parquet(pool_dir / MANIFEST_FILE)
    if pool.empty:
        raise ValueError(f"datacomp_pool at {pool_dir} has an empty manifest: nothing to filter")
    shards = _shard_order(pool)

    # Pass 1: the basic filter needs only the manifest.
    rule = basic_filter(pool, cfg)
    survivors = pool[rule.isna()]

    # Pass 2: the teacher ensemble scores the survivors.
    teachers = load_teachers(ctx.inputs["teacher_models"])
    started = time.perf_counter()
    scores = score_samples(ctx, teachers, pool_dir, survivors, cfg.batch_size) if len(survivors) else {}
    score_seconds = time.perf_counter() - started
    survivor_scores = np.array([scores[uid] for uid in survivors["uid"]], dtype=np.float64)
    keep_mask = select_by_clip_score(survivor_scores, list(survivors["uid"]), cfg.clip_score)
    rule.loc[survivors.index[~keep_mask]] = RULE_CLIP
    kept_uids = set(survivors["uid"][keep_mask])
    clip_score = pool["uid"].map(scores)

    # Pass 3: copy kept samples, one output shard per input shard.
    writer = ShardWriter(ctx.out_dir / POOL_SHARDS_DIR, ctx.out_dir)
    new_shard: dict[str, str] = {}
    kept_preview: list[tuple[Image.Image, str]] = []
    dropped_preview: list[tuple[Image.Image, str]] = []
    preview_rules: Counter[str] = Counter()
    rule_by_uid = dict(zip(pool["uid"], rule, strict=True))
    current = None
    for shard, sample in ctx.progress(_iter_pool(pool_dir, pool, shards), "write kept", total=len(pool)):
        if shard != current:
            writer.next_shard()
            current = shard
        uid = str(sample.meta["uid"])
        if uid in kept_uids:
            new_shard[uid] = writer.write(sample.key, sample.members())
            if len(kept_preview) < PREVIEW_COUNT:
                kept_preview.append((open_rgb(sample.jpg), f"{scores[uid]:.2f} {sample.txt}"))
        elif len(dropped_preview) < PREVIEW_COUNT and preview_rules[rule_by_uid[uid]] < PREVIEW_PER_RULE:
            # A few per rule, so the grid shows every reason rather than the first one met.
            preview_rules[rule_by_uid[uid]] += 1
            dropped_preview.append((open_rgb(sample.jpg), f"[{rule_by_uid[uid]}] {sample.txt}"))
    writer.close()

    dropped = pd.DataFrame({"uid": pool["uid"], "rule": rule, "clip_score": clip_score})[rule.notna()]
    dropped.to_parquet(ctx.out_dir / DROPPED_FILE, index=False)
    counts = Counter(dropped["rule"])
    if not kept_uids:
        raise ValueError(
            f"filtered_pool kept no sample out of {len(pool)}: dropped per rule {dict(counts)}; "
            "loosen filtered_pool settings"
        )

    manifest = pool[pool["uid"].isin(kept_uids)].copy()
    manifest["shard"] = manifest["uid"].map(new_shard)
    manifest["clip_score"] = manifest["uid"].map(scores).astype("float64")
    manifest = manifest.reset_index(drop=True)

    kept_scores = manifest["clip_score"].to_numpy()
    dropped_scored = dropped["clip_score"].dropna().to_numpy()
    summary = {
        "input_samples": len(pool),
        "kept": len(manifest),
        "dropped": len(dropped),
        "dropped_by_rule": {r: int(counts[r]) for r in RULES if counts[r]},
        "basic_filter_survivors": len(survivors),
        "clip_score_mode": cfg.clip_score.mode,
        "clip_score_cutoff": float(kept_scores.min()),
        "teachers": [t.name for t in teachers],
        "scoring_seconds": round(score_seconds, 2),
        "scored_per_second": round(len(survivors) / score_seconds, 1) if score_seconds > 0 else None,
        "shards_written": len(writer.shards),
    }
    metrics = {
        "kept": float(len(manifest)),
        "dropped": float(len(dropped)),
        "keep_rate": len(manifest) / len(pool),
        "clip_score_mean_kept": float(kept_scores.mean()),
        "scoring_seconds": score_seconds,
        **{f"dropped_{r}": float(counts[r]) for r in RULES},
    }
    if len(dropped_scored):
        metrics["clip_score_mean_dropped"] = float(dropped_scored.mean())
    previews = _previews(ctx.out_dir, kept_preview, dropped_preview)
    return StageOutcome(manifest=manifest, summary=summary, metrics=metrics, previews=previews)
