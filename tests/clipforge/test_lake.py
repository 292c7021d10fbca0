"""The lake: atomic publishing on local disk and S3 (moto), and clear errors when storage is down."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import boto3
import pytest

from clipforge.lake import (
    LATEST_POINTER,
    SUCCESS_MARKER,
    Lake,
    LocalLake,
    S3Lake,
    StageNotPublished,
    StorageError,
    open_lake,
)
from tests.conftest import default_params, with_changes


class Boom(RuntimeError):
    pass


def write_files(folder: Path, tag: str) -> None:
    (folder / "data.txt").write_text(tag)
    (folder / "nested" / "deeper").mkdir(parents=True)
    (folder / "nested" / "deeper" / "part.bin").write_bytes(tag.encode() * 3)


# ----------------------------------------------------------------------------- local


def test_local_publish_is_complete_and_marked(tmp_path: Path) -> None:
    lake = open_lake(with_changes(default_params().lake, root=str(tmp_path / "lake")))
    with lake.publish("stage_a") as staging:
        write_files(staging, "v1")
        assert not (tmp_path / "lake" / "stage_a").exists()  # nothing visible before the block ends
    folder = lake.stage_dir("stage_a")
    assert folder == tmp_path / "lake" / "stage_a"
    assert (folder / "data.txt").read_text() == "v1"
    record = json.loads((folder / SUCCESS_MARKER).read_text())
    assert sorted(record["files"]) == ["data.txt", "nested/deeper/part.bin"]
    assert lake.published_version("stage_a") == record["version"]
    assert list((tmp_path / "lake" / ".staging").iterdir()) == []


def test_local_failure_inside_publish_leaves_nothing(tmp_path: Path) -> None:
    lake = open_lake(with_changes(default_params().lake, root=str(tmp_path / "lake")))
    with pytest.raises(Boom), lake.publish("stage_a") as staging:
        write_files(staging, "half")
        raise Boom("the stage crashed")
    assert not (tmp_path / "lake" / "stage_a").exists()
    assert list((tmp_path / "lake" / ".staging").iterdir()) == []  # no staging left over
    with pytest.raises(StageNotPublished, match="stage_a"):
        lake.stage_dir("stage_a")
    assert lake.published_version("stage_a") is None


def test_local_failed_republish_keeps_the_previous_version(tmp_path: Path) -> None:
    lake = open_lake(with_changes(default_params().lake, root=str(tmp_path / "lake")))
    with lake.publish("stage_a") as staging:
        write_files(staging, "v1")
    v1 = lake.published_version("stage_a")
    with pytest.raises(Boom), lake.publish("stage_a") as staging:
        write_files(staging, "v2")
        raise Boom("crash during the re-run")
    assert lake.published_version("stage_a") == v1
    assert (lake.stage_dir("stage_a") / "data.txt").read_text() == "v1"
    # A successful re-publish replaces the whole folder (no file of v1 survives in v2).
    with lake.publish("stage_a") as staging:
        (staging / "only_v3.txt").write_text("v3")
    folder = lake.stage_dir("stage_a")
    assert lake.published_version("stage_a") != v1
    assert sorted(p.name for p in folder.iterdir()) == [SUCCESS_MARKER, "only_v3.txt"]
    assert list((tmp_path / "lake" / ".staging").iterdir()) == []


def test_a_folder_without_marker_is_not_published(tmp_path: Path) -> None:
    (tmp_path / "lake" / "stage_a").mkdir(parents=True)
    (tmp_path / "lake" / "stage_a" / "data.txt").write_text("left by a crash")
    with pytest.raises(StageNotPublished, match="run it first"):
        open_lake(with_changes(default_params().lake, root=str(tmp_path / "lake"))).stage_dir("stage_a")


# ----------------------------------------------------------------------------- S3 (moto)


def s3_lake(endpoint: str, bucket: str, cache: Path) -> Lake:
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return open_lake(
        with_changes(default_params().lake, root=f"s3://{bucket}/runs/r1", endpoint_url=endpoint), cache_dir=cache
    )


def test_s3_publish_then_read_through_the_pointer(tmp_path: Path, moto_s3: str) -> None:
    lake = s3_lake(moto_s3, "lake-publish", tmp_path / "cache")
    with pytest.raises(StageNotPublished, match="s3://lake-publish/runs/r1/stage_a"):
        lake.stage_dir("stage_a")
    with lake.publish("stage_a") as staging:
        write_files(staging, "v1")
    version = lake.published_version("stage_a")
    assert version is not None

    client = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    pointer = json.loads(
        client.get_object(Bucket="lake-publish", Key=f"runs/r1/stage_a/{LATEST_POINTER}")["Body"].read()
    )
    assert pointer["version"] == version
    assert sorted(pointer["files"]) == ["data.txt", "nested/deeper/part.bin"]

    # A second reader (fresh cache) downloads exactly that version.
    reader = open_lake(
        with_changes(default_params().lake, root="s3://lake-publish/runs/r1", endpoint_url=moto_s3),
        cache_dir=tmp_path / "cache2",
    )
    folder = reader.stage_dir("stage_a")
    assert (folder / "data.txt").read_text() == "v1"
    assert (folder / "nested" / "deeper" / "part.bin").read_bytes() == b"v1v1v1"
    assert reader.stage_dir("stage_a") == folder  # cached per version
    assert reader.describe("stage_a") == "s3://lake-publish/runs/r1/stage_a/"


def test_s3_failed_republish_keeps_the_previous_pointer(tmp_path: Path, moto_s3: str) -> None:
    lake = s3_lake(moto_s3, "lake-republish", tmp_path / "cache")
    with lake.publish("stage_a") as staging:
        write_files(staging, "v1")
    v1 = lake.published_version("stage_a")
    with pytest.raises(Boom), lake.publish("stage_a") as staging:
        write_files(staging, "v2")
        raise Boom("crash")
    assert lake.published_version("stage_a") == v1
    reader = open_lake(
        with_changes(default_params().lake, root="s3://lake-republish/runs/r1", endpoint_url=moto_s3),
        cache_dir=tmp_path / "c2",
    )
    assert (reader.stage_dir("stage_a") / "data.txt").read_text() == "v1"
    assert not any((tmp_path / "cache" / "staging" / ".staging").iterdir())


def test_s3_stage_with_no_files_can_be_read(tmp_path: Path, moto_s3: str) -> None:
    lake = s3_lake(moto_s3, "lake-empty", tmp_path / "cache")
    with lake.publish("stage_a"):
        pass
    folder = open_lake(
        with_changes(default_params().lake, root="s3://lake-empty/runs/r1", endpoint_url=moto_s3),
        cache_dir=tmp_path / "c2",
    ).stage_dir("stage_a")
    assert [p.name for p in folder.iterdir()] == [SUCCESS_MARKER]


# ----------------------------------------------------------------------------- unreachable storage


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # released on close: nothing listens there


def test_unreachable_endpoint_raises_storage_error_without_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    access_key, secret_key = "AKIACLIPFORGETESTKEY", "clipforge/secret+value/do-not-print"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    closed = f"http://127.0.0.1:{closed_port()}"
    lake = open_lake(
        with_changes(default_params().lake, root="s3://lake/runs/r1", endpoint_url=closed), cache_dir=tmp_path / "cache"
    )
    with pytest.raises(StorageError) as read_err:
        lake.stage_dir("stage_a")
    with pytest.raises(StorageError) as write_err, lake.publish("stage_a") as staging:
        (staging / "x.txt").write_text("x")
    for err in (read_err.value, write_err.value):
        message = str(err)
        assert "unreachable" in message and "s3://lake/runs/r1/stage_a" in message
        assert secret_key not in message and access_key not in message
    assert not any((tmp_path / "cache" / "staging" / ".staging").iterdir())


def test_open_lake_picks_the_backend_and_both_list_published_files(tmp_path: Path, moto_s3: str) -> None:
    local = open_lake(with_changes(default_params().lake, root=str(tmp_path / "lake")))
    s3 = s3_lake(moto_s3, "lake-listing", tmp_path / "cache")
    assert isinstance(local, LocalLake) and isinstance(s3, S3Lake)
    for lake in (local, s3):
        assert lake.published_files("stage_a") == [] and lake.published_version("stage_a") is None
        with lake.publish("stage_a") as staging:
            write_files(staging, "v1")
        # The record lists the files without reading them (the sensor's view of a stage).
        assert lake.published_files("stage_a") == ["data.txt", "nested/deeper/part.bin"]
        assert lake.published_record("stage_a")["version"] == lake.published_version("stage_a")
