"""The clean teacher corpus: captions of every scene, standing in for the web-scale data real
teachers saw.

KEY.txt holds one caption per line: first the full caption (every attribute: what the captioner
learns to say), then ``teacher_partial_captions`` partial ones naming some attributes (what a
CLIP teacher also sees: short, attribute-level text like "a red star" ties each word to what
it names, where full captions alone let colour words stick to whatever colour is largest).
With ``teacher_hard_negatives``, KEY.neg.txt holds, line for line, a hard negative of each:
the same words for the scene with the object's and background's colours swapped, or another
shape or count (NegCLIP's recipe).
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
from training.data.teacher_corpus import NEGATIVES_EXT


def generate_teacher_corpus(
    shard_dir: Path,
    cfg: EmbeddedCorpusConfig,
    *,
    relative_to: Path,
    progress: Progress = no_progress,
) -> pd.DataFrame:
    """Write the clean corpus ``shard_dir/{i:05d}.tar`` (KEY.jpg, KEY.txt, KEY.json attributes).

    Returns one row per sample: ``key``, ``caption`` (the full one), ``width``, ``height``,
    ``shard`` (relative to ``relative_to``).
    """
    rng = stream_rng(cfg.seed, TEACHER_STREAM)
    side = cfg.image_size
    rows: list[dict[str, Any]] = []
    with ShardWriter(Path(shard_dir), Path(relative_to), max_count=cfg.shard_size) as writer:
        for i in progress(range(cfg.teacher_corpus_size), "teacher corpus", cfg.teacher_corpus_size):
            scene = scenes.sample_scene(rng, side, side)
            kinds = [captions.full_caption] + [captions.partial_caption] * cfg.teacher_partial_captions
            pairs = [captions.with_hard_negative(scene, kind, rng) for kind in kinds]
            lines, negatives = [p for p, _ in pairs], [n for _, n in pairs]
            caption = lines[0]
            attrs = {**scene.attributes(), "caption": caption, "width": side, "height": side}
            key = f"{i:08d}"
            jpg = encode_jpeg(render.render_scene(scene, side, side))
            members = {"jpg": jpg, "txt": "\n".join(lines).encode("utf-8"), "json": json_bytes(attrs)}
            if cfg.teacher_hard_negatives:
                members[NEGATIVES_EXT] = "\n".join(negatives).encode("utf-8")
            shard = writer.write(key, members)
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
