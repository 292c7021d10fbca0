"""Size and content hash of a file or a folder (an .mlpackage, a student folder)."""

from __future__ import annotations

import hashlib
from pathlib import Path

# A sha256 digest as hex, the form every manifest and metadata column holds.
SHA256_HEX = r"^[0-9a-f]{64}$"


def path_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a folder; 0 when nothing is there."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.is_file() else 0


def path_sha256(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative paths and contents, sorted)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
