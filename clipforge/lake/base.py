"""The lake interface every backend implements, and its errors.

Each stage owns one folder ``<root>/<stage>/``. Publishing is atomic on every backend, so a
crash mid-stage never leaves output that looks complete: a stage writes into a private staging
folder, and only when the stage returns is that folder made the published version, with a
record of its files (``_SUCCESS.json`` locally, the ``_LATEST.json`` pointer on S3) written
last. Readers get a local folder of the published version whatever the backend.
"""

from __future__ import annotations

import abc
import contextlib
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SUCCESS_MARKER = "_SUCCESS.json"
STAGING_DIR = ".staging"


class StorageError(RuntimeError):
    """Storage could not be reached or holds something unusable; the message says which."""


class StageNotPublished(StorageError):
    """An upstream stage has no complete, published output yet."""


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


class Lake(abc.ABC):
    """Published stage outputs: read a stage's folder, publish a new version of one."""

    @abc.abstractmethod
    def describe(self, stage: str) -> str:
        """Where the stage's output lives, for people (a path or an s3:// URI)."""

    @abc.abstractmethod
    def published_record(self, stage: str) -> dict[str, Any] | None:
        """The publication record of the stage's current version (``version``, ``files``, ...), or None."""

    @abc.abstractmethod
    def stage_dir(self, stage: str) -> Path:
        """Local folder holding the stage's complete published output; StageNotPublished if none."""

    @abc.abstractmethod
    def _staging_root(self) -> Path:
        """Where private staging folders are made."""

    @abc.abstractmethod
    def _commit(self, stage: str, version: str, staging: Path, record: dict[str, Any]) -> None:
        """Make ``staging`` the stage's published version; the record is written last."""

    def published_version(self, stage: str) -> str | None:
        """Version id of the stage's published output, or None if there is none."""
        record = self.published_record(stage)
        return None if record is None else str(record["version"])

    def published_files(self, stage: str) -> list[str]:
        """Relative paths ("/"-separated) of the files in the stage's published version, [] if none.

        Read from the publication record, so listing costs no download on any backend.
        """
        record = self.published_record(stage)
        return [] if record is None else list(record.get("files", []))

    @contextlib.contextmanager
    def publish(self, stage: str) -> Iterator[Path]:
        """Yield a private staging folder; publish it atomically if the block succeeds."""
        version = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        staging = self._staging_root() / STAGING_DIR / f"{stage}-{version}"
        staging.mkdir(parents=True, exist_ok=False)
        try:
            yield staging
            record = {
                "stage": stage,
                "version": version,
                "published_at": time.time(),
                "files": [p.relative_to(staging).as_posix() for p in files_under(staging)],
            }
            self._commit(stage, version, staging, record)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
