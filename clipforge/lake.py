"""The lake: where stages read their inputs and publish their outputs.

A root is a local folder (default ``lake/``) or ``s3://bucket/prefix``. Each stage owns one
folder ``<root>/<stage>/``. Publishing is atomic in both cases, so a crash mid-stage never
leaves output that looks complete:

- local: the stage writes into ``<root>/.staging/<stage>-<id>/``; on success a
  ``_SUCCESS.json`` marker is written into it and the folder is renamed into place;
- S3 (no rename): files are uploaded under ``<prefix>/<stage>/<version>/`` and the pointer
  ``<prefix>/<stage>/_LATEST.json`` is written last; readers follow only the pointer.

Readers get a local folder in both cases; S3 outputs are downloaded once per version into a
cache folder. Credentials come from boto3's usual sources and are never logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipforge.config import LakeConfig

SUCCESS_MARKER = "_SUCCESS.json"
LATEST_POINTER = "_LATEST.json"


class StorageError(RuntimeError):
    """Storage could not be reached or holds something unusable; the message says which."""


class StageNotPublished(StorageError):
    """An upstream stage has no complete, published output yet."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # no leading or trailing slash

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"s3 URI has no bucket: {uri!r}")
        return cls(bucket, key.strip("/"))

    def join(self, *parts: str) -> S3Location:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Location(self.bucket, key)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def s3_client(endpoint_url: str | None = None, region: str | None = None) -> Any:
    """A boto3 S3 client that fails fast with a clear error when the endpoint is down."""
    import boto3
    from botocore.config import Config

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        s3={"addressing_style": "path"},
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=config,
    )


def _storage_call(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(*args, **kwargs)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "?")
        raise StorageError(f"{what}: S3 answered {code}") from err
    except BotoCoreError as err:
        # Endpoint down, DNS, timeouts: say so plainly (no credentials in the message).
        raise StorageError(f"{what}: storage unreachable ({type(err).__name__}: {err})") from err


def s3_list(client: Any, loc: S3Location) -> list[tuple[str, int]]:
    """(key, size) of every object under ``loc`` (a prefix)."""
    prefix = f"{loc.key}/" if loc.key else ""
    out: list[tuple[str, int]] = []
    paginator = client.get_paginator("list_objects_v2")
    pages = _storage_call(f"listing {loc.uri}", lambda: list(paginator.paginate(Bucket=loc.bucket, Prefix=prefix)))
    for page in pages:
        out.extend((obj["Key"], obj["Size"]) for obj in page.get("Contents", []))
    return out


def s3_download(client: Any, bucket: str, key: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".part-{uuid.uuid4().hex[:8]}")
    _storage_call(f"downloading s3://{bucket}/{key}", client.download_file, bucket, key, str(tmp))
    tmp.replace(dest)


def s3_upload(client: Any, src: Path, bucket: str, key: str) -> None:
    _storage_call(f"uploading to s3://{bucket}/{key}", client.upload_file, str(src), bucket, key)


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


class Lake:
    def __init__(self, cfg: LakeConfig, cache_dir: str | Path | None = None) -> None:
        self.cfg = cfg
        self.is_s3 = cfg.root.startswith("s3://")
        if self.is_s3:
            self._root_s3 = S3Location.parse(cfg.root)
            self._client = s3_client(cfg.endpoint_url, cfg.region)
            default_cache = Path(os.environ.get("CLIPFORGE_CACHE", ".cache")) / "lake"
            self._cache = Path(cache_dir) if cache_dir else default_cache
        else:
            self._root = Path(cfg.root)

    # -- reading ---------------------------------------------------------------------

    def describe(self, stage: str) -> str:
        return f"{self._root_s3.join(stage).uri}/" if self.is_s3 else str(self._root / stage)

    def published_version(self, stage: str) -> str | None:
        """Version id of the stage's published output, or None if there is none."""
        if self.is_s3:
            pointer = self._read_pointer(stage)
            return pointer["version"] if pointer else None
        marker = self._root / stage / SUCCESS_MARKER
        if not marker.is_file():
            return None
        return json.loads(marker.read_text())["version"]

    def stage_dir(self, stage: str) -> Path:
        """Local folder holding the stage's complete published output."""
        if not self.is_s3:
            folder = self._root / stage
            if not (folder / SUCCESS_MARKER).is_file():
                raise StageNotPublished(f"stage {stage!r} has no complete output at {folder}; run it first")
            return folder
        pointer = self._read_pointer(stage)
        if pointer is None:
            raise StageNotPublished(f"stage {stage!r} has no published output at {self.describe(stage)}")
        local = self._cache / self._root_s3.bucket / self._root_s3.key / stage / pointer["version"]
        if (local / SUCCESS_MARKER).is_file():
            return local
        tmp = local.with_name(local.name + f".part-{uuid.uuid4().hex[:8]}")
        # Created up front: a stage may publish no file besides the marker.
        tmp.mkdir(parents=True, exist_ok=True)
        prefix = self._root_s3.join(stage, pointer["version"])
        for rel in pointer["files"]:
            s3_download(self._client, prefix.bucket, f"{prefix.key}/{rel}", tmp / rel)
        (tmp / SUCCESS_MARKER).write_text(json.dumps(pointer))
        if local.exists():
            shutil.rmtree(local)
        tmp.rename(local)
        return local

    def _read_pointer(self, stage: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        loc = self._root_s3.join(stage, LATEST_POINTER)
        try:
            body = self._client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
                return None
            raise StorageError(f"reading {loc.uri}: S3 answered {err.response['Error'].get('Code')}") from err
        except Exception as err:  # botocore connection errors
            raise StorageError(f"reading {loc.uri}: storage unreachable ({type(err).__name__})") from err
        return json.loads(body)

    # -- writing ---------------------------------------------------------------------

    @contextlib.contextmanager
    def publish(self, stage: str) -> Iterator[Path]:
        """Yield a private staging folder; publish it atomically if the block succeeds."""
        version = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        staging_root = (self._root if not self.is_s3 else self._cache / "staging") / ".staging"
        staging = staging_root / f"{stage}-{version}"
        staging.mkdir(parents=True, exist_ok=False)
        try:
            yield staging
            record = {"stage": stage, "version": version, "published_at": time.time()}
            if self.is_s3:
                self._publish_s3(stage, version, staging, record)
            else:
                self._publish_local(stage, staging, record)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _publish_local(self, stage: str, staging: Path, record: dict[str, Any]) -> None:
        record["files"] = [str(p.relative_to(staging)) for p in _files_under(staging)]
        (staging / SUCCESS_MARKER).write_text(json.dumps(record, indent=1))
        final = self._root / stage
        if final.exists():
            trash = self._root / ".staging" / f"{stage}-old-{uuid.uuid4().hex[:8]}"
            final.rename(trash)
            staging.rename(final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            staging.rename(final)

    def _publish_s3(self, stage: str, version: str, staging: Path, record: dict[str, Any]) -> None:
        prefix = self._root_s3.join(stage, version)
        files = _files_under(staging)
        for path in files:
            s3_upload(self._client, path, prefix.bucket, f"{prefix.key}/{path.relative_to(staging)}")
        record["files"] = [str(p.relative_to(staging)) for p in files]
        pointer = self._root_s3.join(stage, LATEST_POINTER)
        # The pointer goes last: until it exists, readers see the previous version (or none).
        _storage_call(
            f"publishing {pointer.uri}",
            self._client.put_object,
            Bucket=pointer.bucket,
            Key=pointer.key,
            Body=json.dumps(record).encode(),
        )
