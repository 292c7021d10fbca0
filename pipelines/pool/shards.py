"""The pipeline's own image-text shards (datacomp_pool, filtered_pool): ``KEY.jpg``, ``KEY.txt``,
``KEY.json``, read and written through :mod:`training.data.tar_shards`.

They are well formed by construction, so :func:`read_samples` raises on anything unexpected:
there it is a bug. Untrusted tars (a pool someone downloaded) are read with
:func:`training.data.tar_shards.iter_tar_groups` instead.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from training.data.tar_shards import iter_tar_samples


def open_rgb(data: bytes) -> Image.Image:
    """An encoded image (a shard's ``jpg`` member) decoded to RGB; PIL's errors propagate."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


# A stage that publishes the pipeline's own shards (datacomp_pool, filtered_pool) keeps them here.
POOL_SHARDS_DIR = "shards"


class ShardFormatError(ValueError):
    """One of the pipeline's own shards is not in the expected layout."""


@dataclass
class Sample:
    """One image-text sample of the pipeline's own shards."""

    key: str
    jpg: bytes
    txt: str
    meta: dict[str, Any]

    def members(self) -> dict[str, bytes]:
        """Extension -> bytes, in the order the members are written."""
        return {
            "jpg": self.jpg,
            "txt": self.txt.encode("utf-8"),
            "json": json.dumps(self.meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
        }


def read_samples(path: Path) -> Iterator[Sample]:
    """Read one of the pipeline's own shards; a damaged tar or a missing member raises."""
    for key, members in iter_tar_samples(path):
        missing = [ext for ext in ("jpg", "txt", "json") if ext not in members]
        if missing:
            raise ShardFormatError(f"{path}: sample {key!r} lacks {', '.join(missing)}")
        yield Sample(
            key=key,
            jpg=members["jpg"],
            txt=members["txt"].decode("utf-8"),
            meta=json.loads(members["json"]),
        )
