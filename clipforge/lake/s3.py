"""A lake on S3 (or any S3-compatible endpoint), and the S3 helpers other storage readers share.

S3 has no rename: a version's files are uploaded under ``<prefix>/<stage>/<version>/`` and the
pointer ``<prefix>/<stage>/_LATEST.json`` (the record) is written last; readers follow only
the pointer, so until it moves they see the previous version. Readers get a local folder: a
version is downloaded once into a cache folder. Credentials come from boto3's usual sources
and are never logged. boto3 rather than fsspec/s3fs: the lake needs only list, get, put and
a conditional-free pointer write, and boto3 is what dvc-s3 and MLflow already pull in.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipforge.config import LakeConfig
from clipforge.lake.base import SUCCESS_MARKER, Lake, StageNotPublished, StorageError, files_under

LATEST_POINTER = "_LATEST.json"


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


class S3Lake(Lake):
    """``s3://bucket/prefix/<stage>/<version>/`` plus the ``_LATEST.json`` pointer per stage."""

    def __init__(self, cfg: LakeConfig, cache_dir: str | Path | None = None) -> None:
        self.cfg = cfg
        self.root = S3Location.parse(cfg.root)
        self.client = s3_client(cfg.endpoint_url, cfg.region)
        default_cache = Path(os.environ.get("CLIPFORGE_CACHE", ".cache")) / "lake"
        self.cache = Path(cache_dir) if cache_dir else default_cache

    def describe(self, stage: str) -> str:
        return f"{self.root.join(stage).uri}/"

    def published_record(self, stage: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        loc = self.root.join(stage, LATEST_POINTER)
        try:
            body = self.client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NoSuchBucket"):
                return None
            raise StorageError(f"reading {loc.uri}: S3 answered {err.response['Error'].get('Code')}") from err
        except Exception as err:  # botocore connection errors
            raise StorageError(f"reading {loc.uri}: storage unreachable ({type(err).__name__})") from err
        return json.loads(body)

    def stage_dir(self, stage: str) -> Path:
        pointer = self.published_record(stage)
        if pointer is None:
            raise StageNotPublished(f"stage {stage!r} has no published output at {self.describe(stage)}")
        local = self.cache / self.root.bucket / self.root.key / stage / pointer["version"]
        if (local / SUCCESS_MARKER).is_file():
            return local
        tmp = local.with_name(local.name + f".part-{uuid.uuid4().hex[:8]}")
        # Created up front: a stage may publish no file besides the marker.
        tmp.mkdir(parents=True, exist_ok=True)
        prefix = self.root.join(stage, pointer["version"])
        for rel in pointer["files"]:
            s3_download(self.client, prefix.bucket, f"{prefix.key}/{rel}", tmp / rel)
        (tmp / SUCCESS_MARKER).write_text(json.dumps(pointer))
        if local.exists():
            shutil.rmtree(local)
        tmp.rename(local)
        return local

    def _staging_root(self) -> Path:
        return self.cache / "staging"

    def _commit(self, stage: str, version: str, staging: Path, record: dict[str, Any]) -> None:
        prefix = self.root.join(stage, version)
        for path in files_under(staging):
            s3_upload(self.client, path, prefix.bucket, f"{prefix.key}/{path.relative_to(staging).as_posix()}")
        pointer = self.root.join(stage, LATEST_POINTER)
        # The pointer goes last: until it exists, readers see the previous version (or none).
        _storage_call(
            f"publishing {pointer.uri}",
            self.client.put_object,
            Bucket=pointer.bucket,
            Key=pointer.key,
            Body=json.dumps(record).encode(),
        )
