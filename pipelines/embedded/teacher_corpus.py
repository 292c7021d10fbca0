"""The clean teacher corpus: full captions of every scene, standing in for the web-scale data real
teachers saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from clipforge.config import EmbeddedCorpusConfig
from clipforge.progress import Progress, no_progress
from pipelines.embedded import captions, render, scenes
from pipelines.embedded.members import encode_jpeg, json_bytes
from pipelines.embedded.streams import TEACHER_STREAM, stream_rng
from training.data.tar_shards import ShardWriter


def generate_teacher_corpus(
    shard_dir: Path,
    cfg: EmbeddedCorpusConfig,
    *,
    relative_to: Path,
    progress: Progress = no_progress,
) -> pd.DataFrame:
    """Write the clean corpus ``shard_dir/{i:05d}.tar`` (KEY.jpg, KEY.txt, KEY.json attributes).

    Returns one row per sample: ``key``, ``caption``, ``width``, ``height``, ``shard`` (relative
    to ``relative_to``).
    """
    rng = stream_rng(cfg.seed, TEACHER_STREAM)
    side = cfg.image_size
    rows: list[dict[str, Any]] = []
    with ShardWriter(Path(shard_dir), Path(relative_to), max_count=cfg.shard_size) as writer:
        for i in progress(range(cfg.teacher_corpus_size), "teacher corpus", cfg.teacher_corpus_size):
            scene = scenes.sample_scene(rng, side, side)
            caption = captions.full_caption(scene, rng)
            attrs = {**scene.attributes(), "caption": caption, "width": side, "height": side}
            key = f"{i:08d}"
            jpg = encode_jpeg(render.render_scene(scene, side, side))
            shard = writer.write(key, {"jpg": jpg, "txt": caption.encode("utf-8"), "json": json_bytes(attrs)})
            rows.append(
                {
                    "key": key,
                    "caption": caption,
                    "width": side,
                    "height": side,
                    "shard": shard,
                }
            )
    return pd.DataFrame(rows, columns=["key", "caption", "width", "height", "shard"])
