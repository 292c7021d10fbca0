"""Webdataset tar shards: the member-name rule, tolerant and strict reading, reproducible writing."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from training.data.tar_shards import (
    DamagedTarError,
    ShardWriter,
    TarWriter,
    iter_tar_groups,
    iter_tar_samples,
    split_member_name,
    write_tar,
)

SAMPLES = [(f"{i:06d}", {"jpg": bytes([i]) * (300 + 100 * i), "txt": f"caption {i}".encode()}) for i in range(3)]


def _write_samples(path: Path) -> bytes:
    with TarWriter(path) as tar:
        for key, members in SAMPLES:
            tar.write_sample(key, members)
    return path.read_bytes()


def test_member_names_split_like_webdataset() -> None:
    assert split_member_name("000001.url.txt") == ("000001", "url.txt")
    assert split_member_name("dir/abc.pth.gz") == ("dir/abc", "pth.gz")
    # Only the file name's first dot counts; extensions are lower-cased.
    assert split_member_name("v1.2/k.JPG") == ("v1.2/k", "jpg")
    for no_member in ("README", "dir/README", ".hidden", "dir/.hidden", "KEY.", "dir/"):
        assert split_member_name(no_member) is None, no_member


def test_writer_is_reproducible_with_ustar_bytes(tmp_path: Path) -> None:
    data = _write_samples(tmp_path / "a.tar")
    assert _write_samples(tmp_path / "sub" / "b.tar") == data
    # Byte for byte what a USTAR writer gives with the same fixed metadata (the embedded
    # corpus's shards were USTAR; their bytes must not change).
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in SAMPLES:
            for ext, blob in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid = len(blob), 0, 0o644, 0, 0
                tar.addfile(info, io.BytesIO(blob))
    assert data == buffer.getvalue()
    with tarfile.open(tmp_path / "a.tar") as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == [f"{k}.{e}" for k, m in SAMPLES for e in m]
    assert {(i.mtime, i.mode, i.uid, i.gid, i.uname, i.gname) for i in infos} == {(0, 0o644, 0, 0, "", "")}


def test_writer_takes_long_names_and_rejects_bad_keys(tmp_path: Path) -> None:
    long_key = "d" * 80 + "/" + "k" * 90
    assert write_tar(tmp_path / "long.tar", [(f"{long_key}.txt", b"x")]) == 1
    assert [(k, m) for k, m in iter_tar_samples(tmp_path / "long.tar")] == [(long_key, {"txt": b"x"})]
    with TarWriter(tmp_path / "keys.tar") as tar:
        tar.write_sample("v1.2/k", {"txt": b"dots in folders are fine"})
        for bad in ("a.b", "", "dir/", "dir/.x"):
            with pytest.raises(ValueError, match="webdataset keys"):
                tar.write_sample(bad, {"txt": b"x"})


def test_shard_writer_rolls_and_returns_relative_paths(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "out" / "shards", tmp_path / "out", max_count=2) as writer:
        got = [writer.write(f"{i:03d}", {"txt": b"t"}) for i in range(3)]
        writer.next_shard()
        writer.next_shard()  # nothing written since: no empty shard
        got.append(writer.write("003", {"txt": b"t"}))
    assert got == ["shards/00000.tar", "shards/00000.tar", "shards/00001.tar", "shards/00002.tar"]
    assert writer.shards == ["shards/00000.tar", "shards/00001.tar", "shards/00002.tar"]
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == ["00000.tar", "00001.tar", "00002.tar"]
    assert [k for k, _ in iter_tar_samples(tmp_path / "out" / "shards" / "00001.tar")] == ["002"]
    named = ShardWriter(tmp_path / "t", tmp_path, name_format="{:d}.tar")
    assert named.write("k", {"txt": b"t"}) == "t/0.tar" and named.close() == ["t/0.tar"]
    with pytest.raises(ValueError, match="max_count"):
        ShardWriter(tmp_path, tmp_path, max_count=0)


def test_groups_skip_non_sample_members_and_keep_first_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as tar:
        tar.addfile(tarfile.TarInfo("folder/"), None)  # a directory entry
        for name, blob in [("a.txt", b"1"), ("a.txt", b"2"), ("README", b"r"), ("a.JSON", b"{}"), ("b.txt", b"3")]:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    groups = list(iter_tar_groups(path))
    assert [(g.key, g.members, g.cut) for g in groups] == [
        ("a", {"txt": b"1", "json": b"{}"}, None),
        ("b", {"txt": b"3"}, None),
    ]


def test_cut_tars_yield_whole_groups_then_the_cut(tmp_path: Path) -> None:
    whole = _write_samples(tmp_path / "whole.tar")
    # Cut inside the data of sample 1's jpg: sample 0 is whole, sample 1 is lost.
    inside = tmp_path / "inside.tar"
    inside.write_bytes(whole[: whole.index(bytes([1]) * 300) + 100])
    groups = list(iter_tar_groups(inside))
    assert [g.key for g in groups] == ["000000", "000001"]
    assert groups[0].cut is None and groups[0].members == SAMPLES[0][1]
    assert groups[1].cut is not None and "jpg" not in groups[1].members
    # Cut on a block boundary between members: tarfile alone would stop silently.
    between = tmp_path / "between.tar"
    between.write_bytes(whole[: whole.index(b"000002.jpg") // 512 * 512])
    groups = list(iter_tar_groups(between))
    assert [g.key for g in groups] == ["000000", "000001"]
    assert groups[1].members == SAMPLES[1][1] and "end-of-archive" in (groups[1].cut or "")
    # No tar at all: one empty group that says so.
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar file" * 100)
    assert [(g.key, g.members) for g in iter_tar_groups(garbage)] == [("", {})]
    assert "not a readable tar" in (next(iter_tar_groups(garbage)).cut or "")


def test_strict_reading_raises_naming_the_file_after_the_whole_samples(tmp_path: Path) -> None:
    whole = _write_samples(tmp_path / "whole.tar")
    assert list(iter_tar_samples(tmp_path / "whole.tar")) == SAMPLES
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[: whole.index(b"000002.jpg") // 512 * 512])
    read = []
    with pytest.raises(DamagedTarError, match=r"cut\.tar: tar cannot be read whole"):
        read.extend(iter_tar_samples(cut))
    assert read == SAMPLES[:1]
