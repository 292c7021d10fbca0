"""The lake: where stages read their inputs and publish their outputs.

One interface (:class:`Lake`), one class per backend: :class:`LocalLake` for a folder (the
default ``lake/``) and :class:`S3Lake` for ``s3://bucket/prefix``. :func:`open_lake` picks the
backend from ``lake.root``. Every caller (the runner, the CLI's summary, the Dagster sensor)
goes through the interface and never asks which backend it has.
"""

from __future__ import annotations

from clipforge.config import LakeConfig
from clipforge.lake.base import SUCCESS_MARKER, Lake, StageNotPublished, StorageError
from clipforge.lake.local import LocalLake
from clipforge.lake.s3 import LATEST_POINTER, S3Lake


def open_lake(cfg: LakeConfig, cache_dir: str | None = None) -> Lake:
    """The backend ``cfg.root`` names: ``s3://...`` -> :class:`S3Lake`, anything else -> :class:`LocalLake`."""
    if cfg.root.startswith("s3://"):
        return S3Lake(cfg, cache_dir=cache_dir)
    return LocalLake(cfg)


__all__ = [
    "LATEST_POINTER",
    "SUCCESS_MARKER",
    "Lake",
    "LocalLake",
    "S3Lake",
    "StageNotPublished",
    "StorageError",
    "open_lake",
]
