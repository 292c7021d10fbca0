"""Where a DataComp-format pool's files are: one listing rule for ingestion and the Dagster sensor.

A pool is img2dataset tars (``KEY.jpg``/``KEY.txt``/``KEY.json``, a parquet beside each tar)
plus optional DataComp metadata parquet joined by ``uid`` (docs/method.md §2.1), in a local
folder or under ``s3://bucket/prefix``. Tars are read from ``<source>/shards/`` when that holds
any, else from ``<source>/`` itself (:func:`classify`). From S3 one file at a time is
downloaded to a temporary folder and deleted after use, so disk use stays at one shard.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa

from clipforge.config import LakeConfig
from clipforge.lake import StorageError
from clipforge.lake.s3 import S3Location, s3_client, s3_download, s3_list

SOURCE_SHARDS_DIR = "shards"
METADATA_COLUMNS: tuple[str, ...] = (
    "url",
    "original_width",
    "original_height",
    "sha256",
    "clip_b32_similarity_score",
    "clip_l14_similarity_score",
)


class PoolSourceError(FileNotFoundError):
    """The configured pool source is missing or holds no shards."""


@dataclass(frozen=True)
class PoolFiles:
    """A pool's files by role, as names relative to its root ("/"-separated)."""

    tars: list[str]
    metadata: list[str]
    # Per-shard parquet beside each tar (img2dataset writes one), by the tar's name.
    shard_parquets: dict[str, str]


def classify(names: list[str]) -> PoolFiles:
    """Split a pool's relative file names into tars, metadata parquets and per-shard parquets."""
    in_shards = sorted(n for n in names if n.startswith(f"{SOURCE_SHARDS_DIR}/") and n.count("/") == 1)
    at_root = sorted(n for n in names if "/" not in n)
    tars = [n for n in in_shards if n.endswith(".tar")] or [n for n in at_root if n.endswith(".tar")]
    stems = {n[: -len(".tar")] for n in tars}
    present = set(names)
    shard_parquets = {f"{s}.tar": f"{s}.parquet" for s in sorted(stems) if f"{s}.parquet" in present}
    candidates = [n for n in at_root if n.endswith(".parquet")]
    candidates += sorted(n for n in names if n.startswith("metadata/") and n.endswith(".parquet"))
    metadata = [n for n in candidates if n[: -len(".parquet")] not in stems]
    return PoolFiles(tars, metadata, shard_parquets)


@dataclass(frozen=True)
class SourceFile:
    # Path relative to the source root, "/"-separated: "shards/00000000.tar".
    name: str
    # Local path, or the S3 key.
    location: str


@dataclass
class PoolSource:
    """Where the pool's files are, and how to get one onto local disk."""

    description: str
    tars: list[SourceFile]
    metadata: list[SourceFile]
    # Per-shard parquet beside each tar, by the tar's name.
    shard_parquets: dict[str, SourceFile] = field(default_factory=dict)
    s3_bucket: str | None = None
    s3_client: Any = None

    @contextlib.contextmanager
    def local_copy(self, item: SourceFile) -> Iterator[Path]:
        """A local path to ``item``; S3 objects are downloaded and deleted after use."""
        if self.s3_client is None:
            yield Path(item.location)
            return
        assert self.s3_bucket is not None
        with tempfile.TemporaryDirectory(prefix="clipforge-ingest-") as tmp:
            dest = Path(tmp) / PurePosixPath(item.name).name
            s3_download(self.s3_client, self.s3_bucket, item.location, dest)
            yield dest


@dataclass(frozen=True)
class _Listing:
    where: str  # the root, for messages: "folder/" or "s3://bucket/prefix/"
    locations: dict[str, str]  # relative name -> local path or S3 key
    bucket: str | None = None
    client: Any = None


def _list(source: str, lake: LakeConfig) -> _Listing:
    if source.startswith("s3://"):
        loc = S3Location.parse(source)
        client = s3_client(lake.endpoint_url, lake.region)
        try:
            listing = s3_list(client, loc)
        except StorageError as err:
            raise StorageError(f"datacomp_pool source {source}: {err}") from err
        prefix = f"{loc.key}/" if loc.key else ""
        return _Listing(f"{loc.uri.rstrip('/')}/", {key[len(prefix) :]: key for key, _ in listing}, loc.bucket, client)
    root = Path(source)
    if not root.is_dir():
        raise PoolSourceError(f"datacomp_pool source {source!r} is not a folder (resolved: {root.resolve()})")
    names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return _Listing(f"{root}/", {name: str(root / name) for name in names})


def list_tars(source: str, lake: LakeConfig) -> tuple[str, list[str]]:
    """(where, tar names) of a folder or s3:// pool, without reading any shard.

    A local folder that does not exist yet holds no tars (the sensor waits for it to appear).
    """
    if not source.startswith("s3://") and not Path(source).is_dir():
        return f"{Path(source)}/", []
    listing = _list(source, lake)
    return listing.where, classify(list(listing.locations)).tars


def open_source(source: str, lake: LakeConfig) -> PoolSource:
    """List a folder or s3:// pool's tars and metadata; a missing or empty source raises naming it.

    ``lake`` gives the S3 endpoint and region an s3:// source is read with.
    """
    listing = _list(source, lake)
    files = classify(list(listing.locations))
    if not files.tars:
        raise PoolSourceError(
            f"datacomp_pool source {source!r} holds no .tar shards "
            f"(looked in {listing.where}{SOURCE_SHARDS_DIR}/ and {listing.where})"
        )

    def file(name: str) -> SourceFile:
        return SourceFile(name, listing.locations[name])

    return PoolSource(
        description=source,
        tars=[file(n) for n in files.tars],
        metadata=[file(n) for n in files.metadata],
        shard_parquets={tar: file(parquet) for tar, parquet in files.shard_parquets.items()},
        s3_bucket=listing.bucket,
        s3_client=listing.client,
    )


def load_metadata(source: PoolSource) -> tuple[pd.DataFrame, list[str]]:
    """The pool's DataComp metadata indexed by uid, and the parquet files ignored.

    Several files may describe the same uid (e.g. DataComp metadata next to other per-uid
    tables): per column, the first non-null value in file order wins. A parquet without a
    ``uid`` column or without any DataComp column is not metadata; it is ignored and listed.
    """
    frames = []
    ignored: list[str] = []
    for item in source.metadata:
        with source.local_copy(item) as path:
            try:
                frame = pd.read_parquet(path)
            except (OSError, ValueError, pa.ArrowException) as err:
                # Metadata carries the CLIP scores filters may rely on: refuse, don't guess.
                raise ValueError(f"metadata parquet {item.name} in {source.description} is unreadable: {err}") from err
        columns = [c for c in METADATA_COLUMNS if c in frame.columns]
        if "uid" not in frame.columns or not columns:
            ignored.append(item.name)
            continue
        frames.append(frame[["uid", *columns]])
    if not frames:
        return pd.DataFrame(columns=list(METADATA_COLUMNS), index=pd.Index([], name="uid")), ignored
    metadata = pd.concat(frames, ignore_index=True).dropna(subset=["uid"])
    metadata["uid"] = metadata["uid"].astype(str)
    return metadata.groupby("uid", sort=False).first(), ignored
