"""Stage ``datacomp_pool``: ingest a DataComp-format pool into normalised shards.

The source (``datacomp_pool.source``) is the generated pool (``embedded``: the
``embedded_corpus`` stage's ``pool/``), a local folder, or ``s3://bucket/prefix``, listed by
``pipelines.pool.source``; each sample is validated and normalised by ``pipelines.pool.ingest``.
Bad samples are skipped, counted and listed with their reason in ``skipped.parquet``; they
never stop the stage. Output layout: docs/stages.md, ``datacomp_pool``.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pyarrow as pa

from clipforge.config import Params
from clipforge.gates.rules import SHA256, Rule, Suite, between, non_empty_text, positive, regex
from clipforge.lake import Lake
from clipforge.stage_api import StageContext, StageOutcome
from pipelines.pool.ingest import SKIP_REASONS, IngestState, ingest_tar, shard_uid_index
from pipelines.pool.shards import POOL_SHARDS_DIR
from pipelines.pool.source import PoolFiles, PoolSourceError, classify, list_tars, load_metadata, open_source
from training.data.embedded_layout import POOL_DIR
from training.data.tar_shards import ShardWriter

SKIPPED_FILE = "skipped.parquet"
EMBEDDED_SOURCE = "embedded"  # datacomp_pool.source naming the embedded_corpus stage's pool

# The manifest columns of a pool sample, in order: datacomp_pool writes them, filtered_pool
# keeps them (and adds its own), and both gates require them.
POOL_COLUMNS: tuple[str, ...] = (
    "uid",
    "key",
    "shard",
    "url",
    "text",
    "width",
    "height",
    "original_width",
    "original_height",
    "sha256",
    "clip_b32_similarity_score",
    "clip_l14_similarity_score",
)
# NaN where the pool's metadata gives no score.
POOL_SCORE_COLUMNS = frozenset({"clip_b32_similarity_score", "clip_l14_similarity_score"})
MANIFEST_COLUMNS: tuple[str, ...] = (
    *POOL_COLUMNS,
    # Where the sample came from, relative to the source root (same for local and S3).
    "source_shard",
    "source_key",
)
# A pool where fewer than this fraction of samples carry a caption is broken upstream (a bad
# parquet join, a wrong column): filtering would silently drop everything. DataComp pools
# have some empty alt-texts, so the gate allows them up to this point.
POOL_MIN_CAPTIONED_FRACTION = 0.5


def pool_rules() -> tuple[Rule, ...]:
    """Rules every pool-sample manifest obeys (datacomp_pool's and filtered_pool's)."""
    return (
        *(positive(c) for c in ("width", "height", "original_width", "original_height")),
        *(between(c, -1, 1) for c in sorted(POOL_SCORE_COLUMNS)),
        regex("sha256", SHA256, "sha256 is 64 lowercase hex chars"),
    )


def quality_suite(params: Params) -> Suite:
    return Suite(
        required=POOL_COLUMNS,
        nullable=POOL_SCORE_COLUMNS,
        unique=(("uid",),),
        rules=(*pool_rules(), non_empty_text("text", mostly=POOL_MIN_CAPTIONED_FRACTION)),
    )


def pool_tars(params: Params, lake: Lake) -> tuple[str, list[str]]:
    """(where, tar names) of the pool this stage would ingest, without reading any shard.

    The Dagster sensor's view of the source, by the same listing rule as ingestion; the
    embedded pool is read from the ``embedded_corpus`` stage's publication record.
    """
    source = params.datacomp_pool.source
    if source != EMBEDDED_SOURCE:
        return list_tars(source, params.lake)
    prefix = f"{POOL_DIR}/"
    names = [name[len(prefix) :] for name in lake.published_files("embedded_corpus") if name.startswith(prefix)]
    files: PoolFiles = classify(names)
    return f"{lake.describe('embedded_corpus')}/{POOL_DIR}", files.tars


def _source_folder(ctx: StageContext) -> str:
    source = ctx.params.datacomp_pool.source
    if source != EMBEDDED_SOURCE:
        return source
    if "embedded_corpus" not in ctx.inputs:
        raise PoolSourceError("datacomp_pool.source is 'embedded' but no embedded_corpus input was given")
    return str(ctx.inputs["embedded_corpus"] / POOL_DIR)


def run(ctx: StageContext) -> StageOutcome:
    cfg = ctx.params.datacomp_pool
    source = open_source(_source_folder(ctx), ctx.params.lake)
    metadata, metadata_ignored = load_metadata(source)
    state = IngestState()
    writer = ShardWriter(ctx.out_dir / POOL_SHARDS_DIR, ctx.out_dir)
    for item in ctx.progress(source.tars, "shards", total=len(source.tars)):
        parquet = source.shard_parquets.get(item.name)
        uid_by_key: dict[str, str] = {}
        if parquet is not None:
            with source.local_copy(parquet) as parquet_path:
                try:
                    uid_by_key = shard_uid_index(parquet_path)
                except (OSError, ValueError, pa.ArrowException):
                    state.unreadable_shard_parquets.append(parquet.name)
        with source.local_copy(item) as tar_path:
            ingest_tar(
                tar_path,
                item.name,
                writer,
                state,
                max_side=cfg.max_image_side,
                metadata=metadata,
                uid_by_key=uid_by_key,
            )
        # One output shard per source tar keeps provenance obvious and memory flat.
        writer.next_shard()
    shards = writer.close()

    skipped = pd.DataFrame(state.skipped, columns=["source", "key", "reason", "detail"], dtype=str)
    skipped.to_parquet(ctx.out_dir / SKIPPED_FILE, index=False)
    reasons = Counter(skipped["reason"])
    if not state.rows:
        raise ValueError(
            f"datacomp_pool ingested no sample from {source.description}: "
            f"{state.samples_read} read, skips by reason {dict(reasons)}"
        )
    manifest = pd.DataFrame(state.rows, columns=list(MANIFEST_COLUMNS))
    for column in ("width", "height", "original_width", "original_height"):
        manifest[column] = manifest[column].astype("int64")
    for column in ("clip_b32_similarity_score", "clip_l14_similarity_score"):
        manifest[column] = manifest[column].astype("float64")

    ingested_uids = set(manifest["uid"])
    summary = {
        "source": source.description,
        "shards_read": len(source.tars),
        "shards_written": len(shards),
        "samples_read": state.samples_read,
        "ingested": len(manifest),
        "skipped": len(skipped),
        "skipped_by_reason": {reason: int(reasons[reason]) for reason in SKIP_REASONS if reasons[reason]},
        "resized": state.resized,
        "unreadable_shard_parquets": state.unreadable_shard_parquets,
        "metadata_files": [m.name for m in source.metadata if m.name not in metadata_ignored],
        "metadata_files_ignored": metadata_ignored,
        "metadata_rows": len(metadata),
        "metadata_rows_without_sample": int(sum(uid not in ingested_uids for uid in metadata.index)),
        "samples_without_metadata": int((~manifest["uid"].isin(metadata.index)).sum()) if len(metadata) else None,
    }
    metrics = {
        "samples_read": float(state.samples_read),
        "ingested": float(len(manifest)),
        "skipped": float(len(skipped)),
        "skip_rate": len(skipped) / max(1, state.samples_read),
        "resized": float(state.resized),
    }
    return StageOutcome(manifest=manifest, summary=summary, metrics=metrics)
