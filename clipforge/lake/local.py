"""A lake in a local folder: staging folders renamed into place."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

from clipforge.config import LakeConfig
from clipforge.lake.base import STAGING_DIR, SUCCESS_MARKER, Lake, StageNotPublished


class LocalLake(Lake):
    """``<root>/<stage>/`` folders; a version is published by renaming its staging folder.

    The stage writes into ``<root>/.staging/<stage>-<version>/``; on success ``_SUCCESS.json``
    (the record) is written into it and the folder is renamed into place, the old one moved
    aside first and deleted after.
    """

    def __init__(self, cfg: LakeConfig) -> None:
        self.cfg = cfg
        self.root = Path(cfg.root)

    def describe(self, stage: str) -> str:
        return str(self.root / stage)

    def published_record(self, stage: str) -> dict[str, Any] | None:
        marker = self.root / stage / SUCCESS_MARKER
        return json.loads(marker.read_text()) if marker.is_file() else None

    def stage_dir(self, stage: str) -> Path:
        folder = self.root / stage
        if not (folder / SUCCESS_MARKER).is_file():
            raise StageNotPublished(f"stage {stage!r} has no complete output at {folder}; run it first")
        return folder

    def _staging_root(self) -> Path:
        return self.root

    def _commit(self, stage: str, version: str, staging: Path, record: dict[str, Any]) -> None:
        (staging / SUCCESS_MARKER).write_text(json.dumps(record, indent=1))
        final = self.root / stage
        if final.exists():
            trash = self.root / STAGING_DIR / f"{stage}-old-{uuid.uuid4().hex[:8]}"
            final.rename(trash)
            staging.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(final)
