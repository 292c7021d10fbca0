"""The generated DataComp-format pool: captions that behave like web alt-text."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clipforge.config import EmbeddedCorpusConfig
from clipforge.progress import Progress, no_progress
from pipelines.embedded import captions, render, scenes, translations
from pipelines.embedded.members import encode_jpeg, json_bytes
from pipelines.embedded.streams import POOL_STREAM, stream_rng
from pipelines.pool.source import SOURCE_SHARDS_DIR
from training.data.tar_shards import ShardWriter

METADATA_FILE = "metadata.parquet"
URL_TEMPLATE = "http://example.invalid/img/{n}.jpg"

# Synthetic CLIP image-text similarity per caption kind (mean, before N(0, 0.035) noise):
# clean captions score high, junk low, like DataComp's B/32 scores.
_SCORE_MEAN = {"full": 0.33, "partial": 0.29, "non_english": 0.20, "wrong": 0.16, "junk": 0.11}
METADATA_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("sha256", pa.string()),
        ("clip_b32_similarity_score", pa.float64()),
        ("clip_l14_similarity_score", pa.float64()),
        ("face_bboxes", pa.list_(pa.list_(pa.float64()))),
    ]
)
SHARD_PARQUET_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("uid", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("sha256", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
    ]
)


def _exact_counts(rng: np.random.Generator, n: int, fractions: dict[str, float], rest: str) -> np.ndarray:
    """``n`` labels: round(f * n) of each fractional label, ``rest`` for the remainder, shuffled."""
    counts = {label: round(f * n) for label, f in fractions.items()}
    if sum(counts.values()) > n:
        raise ValueError(
            f"embedded_corpus fractions {fractions} add up to more than 1 ({sum(fractions.values()):.3f}); lower some"
        )
    labels = [label for label, c in counts.items() for _ in range(c)]
    labels += [rest] * (n - len(labels))
    return rng.permutation(np.asarray(labels, dtype=object))


def _pool_canvas(rng: np.random.Generator, image_kind: str, side: int) -> tuple[int, int]:
    if image_kind == "tiny":
        return int(rng.integers(24, 41)), int(rng.integers(24, 41))
    if image_kind == "extreme":
        short = max(8, round(side * rng.uniform(0.75, 1.0)))
        long = round(short * rng.uniform(4.0, 5.0))
        return (long, short) if rng.random() < 0.5 else (short, long)
    # Web images are rarely exactly square: up to 30% wider or taller than the canvas side.
    return round(side * rng.uniform(1.0, 1.3)), round(side * rng.uniform(1.0, 1.3))


def _pool_key(index: int, shard_size: int) -> str:
    # img2dataset keys: zero-padded shard number then zero-padded position in the shard.
    shard, pos = divmod(index, shard_size)
    width = max(4, len(str(shard_size - 1)))
    return f"{shard:05d}{pos:0{width}d}"


def _write_shard_parquet(tar_path: Path, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=SHARD_PARQUET_SCHEMA)
    pq.write_table(table, tar_path.with_suffix(".parquet"))


def generate_pool(
    out_dir: Path,
    cfg: EmbeddedCorpusConfig,
    progress: Progress = no_progress,
) -> pd.DataFrame:
    """Write a DataComp-format pool: ``out_dir/metadata.parquet`` and ``out_dir/shards/*.tar|parquet``.

    Returns one row per sample: the metadata columns plus the ground truth that a real pool
    lacks (kept out of ``out_dir`` so the pool looks exactly like a DataComp download):
    ``key``, ``shard`` (relative to ``out_dir``), ``width``, ``height``, ``caption_kind``,
    ``image_kind``, ``language`` (de/fr/es or ""), ``duplicate_of`` (source uid or "") and
    ``scene`` (JSON attributes).
    """
    out_dir = Path(out_dir)
    rng = stream_rng(cfg.seed, POOL_STREAM)
    n = cfg.pool_size
    if n < 1:
        raise ValueError(f"embedded_corpus.pool_size must be >= 1, got {n}")
    side = cfg.image_size

    caption_kinds = _exact_counts(
        rng,
        n,
        {
            "junk": cfg.junk_caption_fraction,
            "wrong": cfg.wrong_caption_fraction,
            "non_english": cfg.non_english_fraction,
            "partial": cfg.partial_caption_fraction,
        },
        "full",
    )
    image_kinds = _exact_counts(
        rng, n, {"tiny": cfg.tiny_image_fraction, "extreme": cfg.extreme_aspect_fraction}, "normal"
    )
    uids = [rng.bytes(16).hex() for _ in range(n)]
    if len(set(uids)) != n:  # pragma: no cover - 128 random bits
        raise RuntimeError("uid collision in the generated pool")
    # Exact duplicates: targets copy the image bytes of a source that is not itself a copy.
    n_dup = min(round(cfg.duplicate_fraction * n), n // 2)
    targets = rng.choice(n, size=n_dup, replace=False) if n_dup else np.zeros(0, dtype=int)
    originals = np.setdiff1d(np.arange(n), targets)
    duplicate_source = dict(zip(targets.tolist(), rng.choice(originals, size=n_dup).tolist(), strict=True))

    scene_of: dict[int, scenes.Scene] = {}
    jpeg_of: dict[int, bytes] = {}
    size_of: dict[int, tuple[int, int]] = {}
    for i in progress(originals.tolist(), "pool images", len(originals)):
        w, h = _pool_canvas(rng, str(image_kinds[i]), side)
        scene = scenes.sample_scene(rng, w, h)
        scene_of[i], size_of[i] = scene, (w, h)
        jpeg_of[i] = encode_jpeg(render.render_scene(scene, w, h), quality=int(rng.integers(75, 96)))
    for target, source in duplicate_source.items():
        scene_of[target], size_of[target], jpeg_of[target] = scene_of[source], size_of[source], jpeg_of[source]
        image_kinds[target] = image_kinds[source]

    rows: list[dict[str, Any]] = []
    parquet_rows: dict[str, list[dict[str, Any]]] = {}  # shard -> its img2dataset parquet rows
    with ShardWriter(
        out_dir / SOURCE_SHARDS_DIR, out_dir, name_format="{:08d}.tar", max_count=cfg.shard_size
    ) as writer:
        for i in progress(range(n), "pool shards", n):
            kind = str(caption_kinds[i])
            scene, (w, h), jpg = scene_of[i], size_of[i], jpeg_of[i]
            language = ""
            if kind == "full":
                text = captions.full_caption(scene, rng)
            elif kind == "partial":
                text = captions.partial_caption(scene, rng)
            elif kind == "wrong":
                text = captions.wrong_caption(scene, rng, w, h)
            elif kind == "junk":
                text = captions.junk_caption(rng)
            else:
                language = str(rng.choice(translations.LANGUAGES))
                text = translations.translated_caption(scene, rng, language)
            b32 = _SCORE_MEAN[kind] + rng.normal(0.0, 0.035) - (0.02 if image_kinds[i] == "tiny" else 0.0)
            l14 = 0.9 * b32 - 0.02 + rng.normal(0.0, 0.02)
            key = _pool_key(i, cfg.shard_size)
            url = URL_TEMPLATE.format(n=i)
            sha = hashlib.sha256(jpg).hexdigest()
            sample_json = {
                "uid": uids[i],
                "url": url,
                "key": key,
                "caption": text,
                "width": w,
                "height": h,
                "original_width": w,
                "original_height": h,
                "sha256": sha,
                "status": "success",
                "error_message": None,
            }
            shard = writer.write(key, {"jpg": jpg, "txt": text.encode("utf-8"), "json": json_bytes(sample_json)})
            parquet_rows.setdefault(shard, []).append({k: sample_json[k] for k in SHARD_PARQUET_SCHEMA.names})
            source = duplicate_source.get(i)
            rows.append(
                {
                    "uid": uids[i],
                    "url": url,
                    "text": text,
                    "original_width": w,
                    "original_height": h,
                    "sha256": sha,
                    "clip_b32_similarity_score": float(np.clip(b32, -1.0, 1.0)),
                    "clip_l14_similarity_score": float(np.clip(l14, -1.0, 1.0)),
                    "face_bboxes": [],
                    "key": key,
                    "shard": shard,
                    "width": w,
                    "height": h,
                    "caption_kind": kind,
                    "image_kind": str(image_kinds[i]),
                    "language": language,
                    "duplicate_of": uids[source] if source is not None else "",
                    "scene": json.dumps(scene.attributes(), sort_keys=True),
                }
            )
    for shard, shard_rows in parquet_rows.items():
        _write_shard_parquet(out_dir / shard, shard_rows)
    frame = pd.DataFrame(rows)
    metadata = pa.Table.from_pandas(frame[METADATA_SCHEMA.names], schema=METADATA_SCHEMA, preserve_index=False)
    pq.write_table(metadata, out_dir / METADATA_FILE)
    return frame
