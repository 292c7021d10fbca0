"""Webdataset tar shards: members ``KEY.<ext>``, the members of one sample adjacent.

Every stage and loader reads and writes shards through this module, so all share one set of
rules:

- :func:`split_member_name` is webdataset's: the key ends at the first dot of the member's
  file name; a name without one is no sample member and readers pass over it.
- :func:`iter_tar_groups` reads any tar, cut or garbled ones too, and never raises: it yields
  the groups it read whole, then one group whose ``cut`` says what ended the file early.
- :func:`iter_tar_samples` is the strict reading, for tars that must be whole: a cut raises
  :class:`DamagedTarError` naming the file, after the samples read before it.
- :class:`TarWriter` writes one tar and :class:`ShardWriter` a numbered series of them, with
  fixed member metadata, so equal samples give byte-identical tars on local disk and S3 alike.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

# Member extensions an image may have (img2dataset, DataCompDR); pipeline shards use "jpg".
IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
SHARD_NAME = "{:05d}.tar"
# A complete tar ends with two 512-byte zero blocks; without them the file was cut short.
_END_OF_ARCHIVE = 1024


class DamagedTarError(ValueError):
    """A tar that must be whole is cut short, garbled, or no tar at all."""


def split_member_name(name: str) -> tuple[str, str] | None:
    """``"dir/000123.url.txt"`` -> (``"dir/000123"``, ``"url.txt"``); None for no sample member.

    The key ends at the first dot of the file name, so ``KEY.pth.gz`` has extension ``pth.gz``;
    extensions are lower-cased (as webdataset does). A file name without a key or an extension
    (``README``, ``.hidden``, ``KEY.``) is None.
    """
    directory, slash, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    if not stem or not ext:
        return None
    return directory + slash + stem, ext.lower()


def _check_key(key: str) -> None:
    # Members KEY.<ext> must split back into KEY, or a reader regroups them differently.
    if split_member_name(f"{key}.x") != (key, "x"):
        raise ValueError(f"webdataset keys need a non-empty file name without dots, got {key!r}")


@dataclass
class TarGroup:
    """The adjacent members of one key: extension -> bytes."""

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
    """Group a tar's members by key, tolerating truncation and garbage; never raises on content.

    Streams the file (``r|``: no random access, so a cut is met where it lies). Non-file
    members (folders, links) and names that are no sample member are passed over. Every group
    read completely is yielded; on a cut the group in progress is yielded with ``cut`` set and
    reading stops. A repeated extension within a group keeps its first copy.
    """
    current: TarGroup | None = None
    members_read = 0
    try:
        with tarfile.open(path, mode="r|") as tar:
            for info in tar:
                parts = split_member_name(info.name) if info.isfile() else None
                if parts is None:
                    continue
                key, ext = parts
                if current is not None and key != current.key:
                    yield current
                    current = None
                if current is None:
                    current = TarGroup(key)
                handle = tar.extractfile(info)
                data = handle.read() if handle is not None else b""
                if len(data) != info.size:
                    raise tarfile.ReadError("unexpected end of data")
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


def iter_tar_samples(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample of a tar that must be whole.

    Raises :class:`DamagedTarError` where the tar turns out cut or garbled, having yielded the
    samples read whole before that point.
    """
    for group in iter_tar_groups(path):
        if group.cut is not None:
            raise DamagedTarError(f"{path}: tar cannot be read whole ({group.cut})")
        yield group.key, group.members


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    # Fixed metadata so identical members give byte-identical tars wherever they are written.
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class TarWriter:
    """Writes one deterministic tar member by member; :meth:`close` (or the ``with``) ends it.

    PAX format: for short ASCII names its headers are byte for byte those of USTAR, and it
    still takes long or non-ASCII names.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Kept open across calls and closed by close(): members stream to disk, not to memory.
        self._tar = tarfile.open(self.path, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def write_member(self, name: str, data: bytes) -> None:
        self._tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))

    def write_sample(self, key: str, members: Mapping[str, bytes]) -> None:
        """One sample: a member ``KEY.<ext>`` per entry, in the mapping's order."""
        _check_key(key)
        for ext, data in members.items():
            self.write_member(f"{key}.{ext}", data)

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> int:
    """Write a deterministic tar of (name, bytes) members; returns how many were written."""
    count = 0
    with TarWriter(path) as tar:
        for name, data in members:
            tar.write_member(name, data)
            count += 1
    return count


class ShardWriter:
    """Streams samples into ``folder/<name_format.format(i)>``; a new shard starts every
    ``max_count`` samples or when :meth:`next_shard` is called. Empty shards are never created.

    ``write`` returns the shard's path relative to ``relative_to`` ("/"-separated): the value
    manifests store in their ``shard`` column.
    """

    def __init__(
        self,
        folder: Path,
        relative_to: Path,
        *,
        name_format: str = SHARD_NAME,
        max_count: int | None = None,
    ) -> None:
        if max_count is not None and max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        self.folder = folder
        self.relative_to = relative_to
        self.name_format = name_format
        self.max_count = max_count
        # Relative paths of every shard finished so far, in order.
        self.shards: list[str] = []
        self._tar: TarWriter | None = None
        self._count = 0

    def _relative(self, path: Path) -> str:
        return path.relative_to(self.relative_to).as_posix()

    def write(self, key: str, members: Mapping[str, bytes]) -> str:
        if self._tar is not None and self.max_count is not None and self._count >= self.max_count:
            self.next_shard()
        if self._tar is None:
            self._tar = TarWriter(self.folder / self.name_format.format(len(self.shards)))
        self._tar.write_sample(key, members)
        self._count += 1
        return self._relative(self._tar.path)

    def next_shard(self) -> None:
        """Finish the shard being filled, if any; the next sample starts a new one."""
        if self._tar is None:
            return
        self._tar.close()
        self.shards.append(self._relative(self._tar.path))
        self._tar = None
        self._count = 0

    def close(self) -> list[str]:
        self.next_shard()
        return self.shards

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
