"""Webdataset tar shards of image-text samples: ``KEY.jpg``, ``KEY.txt``, ``KEY.json``.

Two readers, because two kinds of tar reach the pipeline:

- :func:`iter_tar_groups` reads *untrusted* tars (a pool someone downloaded). It never raises
  on bad content: it groups adjacent members by key and, when the tar is cut short or
  garbled, yields what it read completely and then one entry that records the cut.
- :func:`read_samples` reads the pipeline's *own* shards (datacomp_pool, filtered_pool), which
  are well formed by construction; anything unexpected there is a bug, so it raises.

:class:`ShardWriter` writes deterministic tars (fixed mtime, owner and mode), so the same
samples give byte-identical shards on local disk and S3 alike.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Member extensions an img2dataset image may have; the pipeline's own shards always use "jpg".
IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
SHARD_NAME = "{:05d}.tar"
# A complete tar ends with two 512-byte zero blocks; without them the file was cut short.
_END_OF_ARCHIVE = 1024


class ShardFormatError(ValueError):
    """One of the pipeline's own shards is not in the expected layout."""


def split_member_name(name: str) -> tuple[str, str]:
    """``"dir/000123.jpg"`` -> (``"dir/000123"``, ``"jpg"``): webdataset's key / extension split.

    The key ends at the first dot of the file name, so ``KEY.pth.gz`` has extension ``pth.gz``.
    """
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower() if dot else ""


@dataclass
class TarGroup:
    """The adjacent members of one key, as read from an untrusted tar."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    # Set on the last entry of a tar that ends abruptly: what cut it. A cut entry may carry
    # members read completely before the cut (a whole sample whose successor was lost), or
    # none (key "" when the cut fell between samples or the file is no tar at all).
    cut: str | None = None


def _has_end_of_archive(path: Path) -> bool:
    size = path.stat().st_size
    if size < _END_OF_ARCHIVE:
        return False
    with path.open("rb") as fh:
        fh.seek(size - _END_OF_ARCHIVE)
        return fh.read(_END_OF_ARCHIVE) == bytes(_END_OF_ARCHIVE)


def iter_tar_groups(path: Path) -> Iterator[TarGroup]:
    """Group an untrusted tar's members by key, tolerating truncation and garbage.

    Streams the file (``r|``: no random access, so a cut is met where it lies). Non-file
    members (folders, links) are ignored. Every group read completely is yielded; on a cut
    the group in progress is yielded with ``cut`` set and reading stops.
    """
    current: TarGroup | None = None
    members_read = 0
    try:
        with tarfile.open(path, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = split_member_name(info.name)
                if current is not None and key != current.key:
                    yield current
                    current = None
                if current is None:
                    current = TarGroup(key)
                handle = tar.extractfile(info)
                data = handle.read() if handle is not None else b""
                if len(data) != info.size:
                    raise tarfile.ReadError("unexpected end of data")
                # A repeated extension keeps the first copy: adjacent duplicates are a writer bug.
                current.members.setdefault(ext, data)
                members_read += 1
    except (tarfile.TarError, EOFError, OSError) as err:
        reason = f"{type(err).__name__}: {err}" if members_read else f"not a readable tar ({err})"
        if current is None:
            current = TarGroup("")
        current.cut = reason
        yield current
        return
    if not _has_end_of_archive(path):
        # tarfile stops silently when the file ends on a block boundary: the tar was cut
        # between members. The group read last may be whole or not; the consumer decides.
        reason = "tar ends without its end-of-archive blocks (cut between members)"
        if current is None:
            yield TarGroup("", cut=reason)
        else:
            current.cut = reason
            yield current
        return
    if current is not None:
        yield current


@dataclass
class Sample:
    """One image-text sample of the pipeline's own shards."""

    key: str
    jpg: bytes
    txt: str
    meta: dict[str, Any]

    def members(self) -> list[tuple[str, bytes]]:
        return [
            (f"{self.key}.jpg", self.jpg),
            (f"{self.key}.txt", self.txt.encode("utf-8")),
            (f"{self.key}.json", json.dumps(self.meta, sort_keys=True, ensure_ascii=False).encode("utf-8")),
        ]


def read_samples(path: Path) -> Iterator[Sample]:
    """Read one of the pipeline's own shards; any deviation from the layout raises."""
    for group in iter_tar_groups(path):
        if group.cut is not None:
            raise ShardFormatError(f"{path}: shard is damaged ({group.cut})")
        missing = [ext for ext in ("jpg", "txt", "json") if ext not in group.members]
        if missing:
            raise ShardFormatError(f"{path}: sample {group.key!r} lacks {', '.join(missing)}")
        yield Sample(
            key=group.key,
            jpg=group.members["jpg"],
            txt=group.members["txt"].decode("utf-8"),
            meta=json.loads(group.members["json"]),
        )


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata so identical samples give byte-identical tars wherever they are written.
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> int:
    """Write a deterministic tar of (name, bytes) members; returns how many were written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
            count += 1
    return count


class ShardWriter:
    """Streams samples into ``folder/{i:05d}.tar``; a new shard starts every ``max_count``
    samples or when :meth:`next_shard` is called. Empty shards are never created.

    ``write`` returns the shard's path relative to ``relative_to`` (the stage folder): the
    value manifests store in their ``shard`` column.
    """

    def __init__(self, folder: Path, relative_to: Path, max_count: int | None = None) -> None:
        self.folder = folder
        self.relative_to = relative_to
        self.max_count = max_count
        # Relative paths of every shard finished so far, in order.
        self.shards: list[str] = []
        self._tar: tarfile.TarFile | None = None
        self._count = 0
        self._index = 0

    def _relative(self, index: int) -> str:
        return str((self.folder / SHARD_NAME.format(index)).relative_to(self.relative_to))

    def write(self, sample: Sample) -> str:
        if self._tar is not None and self.max_count is not None and self._count >= self.max_count:
            self.next_shard()
        if self._tar is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / SHARD_NAME.format(self._index)
            # Kept open across write() calls and closed by next_shard(): streaming, not buffering.
            self._tar = tarfile.open(path, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        for name, data in sample.members():
            self._tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
        self._count += 1
        return self._relative(self._index)

    def next_shard(self) -> None:
        """Finish the shard being filled, if any; the next sample starts a new one."""
        if self._tar is None:
            return
        self._tar.close()
        self._tar = None
        self.shards.append(self._relative(self._index))
        self._count = 0
        self._index += 1

    def close(self) -> list[str]:
        self.next_shard()
        return self.shards

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
