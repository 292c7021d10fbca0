"""Ingesting one sample of an untrusted pool: validate, decode, normalise, or skip with a reason.

Every sample is decoded (PIL verify + load) and resized when its long side exceeds
``max_image_side`` (re-encoded as JPEG only then, or when it is not a JPEG). Bad samples are
skipped with a reason (:data:`SKIP_REASONS`); they never stop the stage. An empty caption is
not a skip: DataComp has them and the filter judges them.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from clipforge.files import SHA256_HEX
from pipelines.pool.shards import Sample
from training.data.tar_shards import IMAGE_EXTS, ShardWriter, TarGroup, iter_tar_groups

JPEG_QUALITY = 95

# Why a sample was not ingested (skipped.parquet's ``reason``), in the order they are tested.
UNREADABLE_TAR = "unreadable_tar"  # the file is no tar at all: nothing could be read
TRUNCATED_TAR = "truncated_tar"  # the tar is cut short; complete samples before the cut are kept
MISSING_IMAGE = "missing_jpg"
MISSING_TXT = "missing_txt"
MISSING_JSON = "missing_json"
CORRUPT_JSON = "corrupt_json"
NON_UTF8_CAPTION = "non_utf8_caption"
MISSING_UID = "missing_uid"
INVALID_UID = "invalid_uid"  # not usable as a webdataset key (DataComp uids are 32 hex chars)
CORRUPT_IMAGE = "corrupt_image"
IMAGE_TOO_LARGE = "image_too_large"  # PIL's decompression-bomb guard
DUPLICATE_UID = "duplicate_uid"  # a later copy of a uid already ingested (the first is kept)
SKIP_REASONS: tuple[str, ...] = (
    UNREADABLE_TAR,
    TRUNCATED_TAR,
    MISSING_IMAGE,
    MISSING_TXT,
    MISSING_JSON,
    CORRUPT_JSON,
    NON_UTF8_CAPTION,
    MISSING_UID,
    INVALID_UID,
    CORRUPT_IMAGE,
    IMAGE_TOO_LARGE,
    DUPLICATE_UID,
)
_UID = re.compile(r"^[0-9A-Za-z_-]{1,128}$")
_SHA256 = re.compile(SHA256_HEX)


class SkipSample(Exception):
    """A sample that cannot be ingested, with the reason recorded in skipped.parquet."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _positive_int(value: Any) -> int | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number > 0 else None


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _first_present(*values: Any) -> Any:
    for value in values:
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return value
    return None


def decode_image(data: bytes) -> Image.Image:
    """Verify then fully decode an image; raises :class:`SkipSample` when it cannot."""
    with warnings.catch_warnings():
        # Above PIL's pixel limit a decompression bomb is likelier than a photo: refuse it.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()  # structure and checksums; the object is unusable afterwards
            image = Image.open(io.BytesIO(data))
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise SkipSample(IMAGE_TOO_LARGE, str(err)) from err
        except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError...)
            raise SkipSample(CORRUPT_IMAGE, f"{type(err).__name__}: {err}") from err
    return image


def normalise_image(data: bytes, max_side: int) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """(jpg bytes, its (width, height), the source's (width, height)), long side <= ``max_side``.

    The source bytes are kept when the image is a JPEG small enough; otherwise the image is
    resized (bicubic, aspect kept) and/or re-encoded as an RGB JPEG.
    """
    image = decode_image(data)
    source_size = image.size
    width, height = source_size
    resize = max(width, height) > max_side
    if not resize and image.format == "JPEG":
        return data, source_size, source_size
    rgb = image.convert("RGB")
    if resize:
        scale = max_side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        rgb = rgb.resize((width, height), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue(), (width, height), source_size


@dataclass
class Ingested:
    sample: Sample
    row: dict[str, Any]
    resized: bool


def ingest_group(
    group: TarGroup,
    *,
    max_side: int,
    metadata: pd.DataFrame,
    uid_by_key: dict[str, str],
) -> Ingested:
    """Validate and normalise one sample; raises :class:`SkipSample` with the reason."""
    image_ext = next((ext for ext in IMAGE_EXTS if ext in group.members), None)
    if image_ext is None:
        raise SkipSample(MISSING_IMAGE)
    if "txt" not in group.members:
        raise SkipSample(MISSING_TXT)
    if "json" not in group.members:
        raise SkipSample(MISSING_JSON)
    try:
        info = json.loads(group.members["json"])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SkipSample(CORRUPT_JSON, str(err)) from err
    if not isinstance(info, dict):
        raise SkipSample(CORRUPT_JSON, f"top level is {type(info).__name__}, not an object")
    try:
        caption = group.members["txt"].decode("utf-8")
    except UnicodeDecodeError as err:
        raise SkipSample(NON_UTF8_CAPTION, str(err)) from err
    uid = _first_present(info.get("uid"), uid_by_key.get(group.key))
    if uid is None or str(uid).strip() == "":
        raise SkipSample(MISSING_UID)
    uid = str(uid)
    if not _UID.match(uid):
        raise SkipSample(INVALID_UID, uid[:80])
    source_image = group.members[image_ext]
    jpg, (width, height), (source_w, source_h) = normalise_image(source_image, max_side)

    meta = metadata.loc[uid] if uid in metadata.index else pd.Series(dtype=object)
    url = _first_present(info.get("url"), meta.get("url"))
    original_width = _positive_int(_first_present(info.get("original_width"), meta.get("original_width")))
    original_height = _positive_int(_first_present(info.get("original_height"), meta.get("original_height")))
    # The pool's sha256 is of the originally downloaded bytes (not re-checkable after any
    # resize); when it gives none, or not a well-formed digest, hash the bytes we got.
    claimed = str(_first_present(info.get("sha256"), meta.get("sha256")) or "").strip().lower()
    sha256 = claimed if _SHA256.match(claimed) else hashlib.sha256(source_image).hexdigest()
    row = {
        "uid": uid,
        "key": uid,
        "url": "" if url is None else str(url),  # "" when neither the sample nor metadata knows it
        "text": caption,
        "width": width,
        "height": height,
        # The pool's own record of the original size wins; img2dataset may have resized already.
        "original_width": original_width or source_w,
        "original_height": original_height or source_h,
        "sha256": sha256,
        "clip_b32_similarity_score": _float_or_nan(
            _first_present(info.get("clip_b32_similarity_score"), meta.get("clip_b32_similarity_score"))
        ),
        "clip_l14_similarity_score": _float_or_nan(
            _first_present(info.get("clip_l14_similarity_score"), meta.get("clip_l14_similarity_score"))
        ),
    }
    out_meta = {
        "uid": uid,
        "url": row["url"],
        "caption": caption,
        "width": width,
        "height": height,
        "original_width": row["original_width"],
        "original_height": row["original_height"],
        "sha256": row["sha256"],
    }
    resized = (width, height) != (source_w, source_h)
    return Ingested(Sample(key=uid, jpg=jpg, txt=caption, meta=out_meta), row, resized)


def shard_uid_index(path: Path) -> dict[str, str]:
    """key -> uid from img2dataset's per-shard parquet: the fallback when a json lacks uid.

    Raises when the parquet cannot be read; the caller records that and goes on without it.
    """
    frame = pd.read_parquet(path)
    if not {"key", "uid"} <= set(frame.columns):
        return {}
    frame = frame.dropna(subset=["key", "uid"])
    return dict(zip(frame["key"].astype(str), frame["uid"].astype(str), strict=True))


@dataclass
class IngestState:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    seen_uids: set[str] = field(default_factory=set)
    samples_read: int = 0
    resized: int = 0
    # Per-shard parquets that could not be read (only a uid fallback is lost; listed, not fatal).
    unreadable_shard_parquets: list[str] = field(default_factory=list)

    def skip(self, source: str, key: str, reason: str, detail: str = "") -> None:
        self.skipped.append({"source": source, "key": key, "reason": reason, "detail": detail})


def ingest_tar(
    path: Path,
    source_name: str,
    writer: ShardWriter,
    state: IngestState,
    *,
    max_side: int,
    metadata: pd.DataFrame,
    uid_by_key: dict[str, str],
) -> None:
    """Stream one source tar into ``writer``; every sample ends up ingested or skipped."""
    groups_seen = 0
    for group in iter_tar_groups(path):
        has_sample = bool(group.members)
        state.samples_read += int(has_sample)
        first = groups_seen == 0
        groups_seen += 1
        if group.cut is not None and not _is_whole(group):
            # Nothing at all read from the file: it is no tar. Otherwise the tar was cut short
            # and this (partial or absent) sample is what the cut cost.
            reason = UNREADABLE_TAR if first and not has_sample else TRUNCATED_TAR
            state.skip(source_name, group.key, reason, group.cut)
            continue
        if group.cut is not None:
            # The sample itself is whole: keep it, and still record that the tar was cut after it.
            state.skip(source_name, "", TRUNCATED_TAR, group.cut)
        try:
            result = ingest_group(group, max_side=max_side, metadata=metadata, uid_by_key=uid_by_key)
        except SkipSample as skip:
            state.skip(source_name, group.key, skip.reason, skip.detail)
            continue
        uid = result.row["uid"]
        if uid in state.seen_uids:
            state.skip(source_name, group.key, DUPLICATE_UID, uid)
            continue
        state.seen_uids.add(uid)
        shard = writer.write(result.sample.key, result.sample.members())
        state.rows.append({**result.row, "shard": shard, "source_shard": source_name, "source_key": group.key})
        state.resized += int(result.resized)


def _is_whole(group: TarGroup) -> bool:
    return "txt" in group.members and "json" in group.members and any(e in group.members for e in IMAGE_EXTS)
