"""datacomp_pool: every bad sample is skipped with its reason, every good one is kept."""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from clipforge.config import Params
from clipforge.lake import StorageError
from clipforge.params_file import apply_overrides
from clipforge.stage_api import StageContext, StageOutcome
from pipelines import datacomp_pool as ingest
from pipelines.pool.shards import read_samples
from tests.conftest import stage_gate
from training.data.tar_shards import write_tar

Members = list[tuple[str, bytes]]


def with_overrides(params: Params, *overrides: str) -> Params:
    return Params.model_validate(apply_overrides(params.model_dump(mode="json"), list(overrides)))


def image_bytes(width: int, height: int, fmt: str = "JPEG", color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format=fmt)
    return out.getvalue()


def uid_of(n: int) -> str:
    return hashlib.md5(f"sample-{n}".encode()).hexdigest()  # 32 hex chars, like DataComp


def sample(key: str, uid: str | None, caption: str = "a red square on a table", **info: object) -> Members:
    meta = {"uid": uid, "url": f"http://example.com/{key}.jpg", "caption": caption, "status": "success", **info}
    if uid is None:
        del meta["uid"]
    return [
        (f"{key}.jpg", image_bytes(64, 48)),
        (f"{key}.txt", caption.encode("utf-8")),
        (f"{key}.json", json.dumps(meta).encode()),
    ]


def without(members: Members, ext: str) -> Members:
    return [(name, data) for name, data in members if not name.endswith(f".{ext}")]


def replace(members: Members, ext: str, data: bytes) -> Members:
    return [(name, data if name.endswith(f".{ext}") else old) for name, old in members]


def run_ingest(params: Params, out_dir: Path, inputs: dict[str, Path] | None = None) -> StageOutcome:
    out_dir.mkdir(parents=True)
    ctx = StageContext("datacomp_pool", params, inputs or {}, out_dir, show_progress=False)
    return ingest.run(ctx)


def source_params(tiny_params: Params, source: Path | str, *overrides: str) -> Params:
    return with_overrides(tiny_params, f"datacomp_pool.source={source}", *overrides)


def test_good_pool_is_ingested_whole_from_the_embedded_layout(tmp_path: Path, tiny_params: Params) -> None:
    pool = tmp_path / "corpus" / "pool"
    goods = [sample(f"0000{i:04d}", uid_of(i), caption=f"a red square number {i}") for i in range(6)]
    write_tar(pool / "shards" / "00000000.tar", [m for s in goods[:4] for m in s])
    write_tar(pool / "shards" / "00000001.tar", [m for s in goods[4:] for m in s])

    params = source_params(tiny_params, "embedded")
    outcome = run_ingest(params, tmp_path / "out", {"embedded_corpus": tmp_path / "corpus"})

    manifest = outcome.manifest
    assert list(manifest["uid"]) == [uid_of(i) for i in range(6)]
    assert set(ingest.MANIFEST_COLUMNS) <= set(manifest.columns)
    assert manifest["uid"].is_unique and (manifest["key"] == manifest["uid"]).all()
    assert list(manifest["shard"].unique()) == ["shards/00000.tar", "shards/00001.tar"]
    assert (manifest[["width", "height", "original_width", "original_height"]] == [64, 48, 64, 48]).all().all()
    assert manifest["clip_b32_similarity_score"].isna().all()  # no metadata: unknown, not invented
    assert outcome.summary["samples_read"] == 6 and outcome.summary["skipped"] == 0
    assert outcome.summary["shards_read"] == 2

    # The output shards hold exactly the manifest's samples, readable, with the contract's json.
    read = [s for shard in manifest["shard"].unique() for s in read_samples(tmp_path / "out" / shard)]
    assert [s.key for s in read] == list(manifest["key"])
    first = read[0]
    assert first.jpg == goods[0][0][1]  # a small JPEG keeps its bytes
    assert first.txt == "a red square number 0"
    assert set(first.meta) == {
        "uid",
        "url",
        "caption",
        "width",
        "height",
        "original_width",
        "original_height",
        "sha256",
    }
    assert first.meta["sha256"] == hashlib.sha256(goods[0][0][1]).hexdigest()
    skipped = pd.read_parquet(tmp_path / "out" / ingest.SKIPPED_FILE)
    assert skipped.empty and list(skipped.columns) == ["source", "key", "reason", "detail"]


def test_each_bad_kind_is_skipped_and_counted_and_good_samples_kept(tmp_path: Path, tiny_params: Params) -> None:
    src = tmp_path / "src"
    good = [sample(f"g{i}", uid_of(i), caption=f"good sample {i}") for i in range(5)]
    empty_caption = sample("empty", uid_of(100), caption="")
    bad = {
        "corrupt_image": replace(sample("b1", uid_of(201)), "jpg", b"\xff\xd8\xff\xe0 not really a jpeg"),
        "missing_jpg": without(sample("b2", uid_of(202)), "jpg"),
        "missing_txt": without(sample("b3", uid_of(203)), "txt"),
        "missing_json": without(sample("b4", uid_of(204)), "json"),
        "non_utf8_caption": replace(sample("b5", uid_of(205)), "txt", b"caf\xe9 au lait \xff"),
        "missing_uid": sample("b6", None),
        "corrupt_json": replace(sample("b7", uid_of(207)), "json", b"{not json"),
        "duplicate_uid": sample("b8", uid_of(0), caption="a second copy of good sample 0"),
        "invalid_uid": sample("b9", "../../etc/passwd"),
    }
    members = [
        *good[0],
        *bad["corrupt_image"],
        *good[1],
        *bad["missing_jpg"],
        *bad["missing_txt"],
        *good[2],
        *bad["missing_json"],
        *bad["non_utf8_caption"],
        *bad["missing_uid"],
        *bad["corrupt_json"],
        *empty_caption,
        *bad["duplicate_uid"],
        *bad["invalid_uid"],
    ]
    write_tar(src / "00000.tar", members)
    # A second tar cut inside its third sample: the two samples before the cut are kept.
    write_tar(src / "00001.tar", [*good[3], *good[4], *sample("cut", uid_of(300))])
    whole = (src / "00001.tar").read_bytes()
    data_end = whole.rfind(b"a red square on a table")  # inside the last sample's json member
    (src / "00001.tar").write_bytes(whole[: data_end + 5])
    (src / "00002.tar").write_bytes(b"this is not a tar file at all" * 10)

    outcome = run_ingest(source_params(tiny_params, src), tmp_path / "out")

    kept = set(outcome.manifest["uid"])
    assert kept == {uid_of(i) for i in range(5)} | {uid_of(100)}
    # An empty caption is data, not a skip; the caption is kept as it was.
    assert outcome.manifest.set_index("uid").loc[uid_of(100), "text"] == ""
    # The first copy of a duplicated uid wins.
    assert outcome.manifest.set_index("uid").loc[uid_of(0), "text"] == "good sample 0"

    skipped = pd.read_parquet(tmp_path / "out" / ingest.SKIPPED_FILE)
    expected = {reason: 1 for reason in bad} | {"truncated_tar": 1, "unreadable_tar": 1}
    assert skipped["reason"].value_counts().to_dict() == expected
    by_reason = skipped.set_index("reason")
    assert by_reason.loc["missing_uid", "key"] == "b6"
    assert by_reason.loc["truncated_tar", "key"] == "cut"
    assert by_reason.loc["truncated_tar", "source"] == "00001.tar"
    assert by_reason.loc["unreadable_tar", "source"] == "00002.tar"

    summary = outcome.summary
    assert summary["ingested"] == 6
    assert summary["skipped_by_reason"] == expected
    # Read = every sample seen in a tar (the unreadable tar yields none).
    assert summary["samples_read"] == 6 + len(bad) + 1
    assert summary["shards_read"] == 3
    for shard in outcome.manifest["shard"].unique():
        assert all(s.jpg for s in read_samples(tmp_path / "out" / shard))
    assert stage_gate("datacomp_pool", outcome.manifest, tiny_params).passed


def test_tar_cut_between_members_is_detected(tmp_path: Path, tiny_params: Params) -> None:
    src = tmp_path / "src"
    write_tar(src / "00000.tar", [*sample("a", uid_of(1)), *sample("b", uid_of(2))])
    whole = (src / "00000.tar").read_bytes()
    # Cut on a block boundary right after b.txt: tarfile alone would read this silently.
    cut = whole.index(b"b.json") // 512 * 512
    (src / "00000.tar").write_bytes(whole[:cut])

    outcome = run_ingest(source_params(tiny_params, src), tmp_path / "out")

    assert list(outcome.manifest["uid"]) == [uid_of(1)]
    assert outcome.summary["skipped_by_reason"] == {"truncated_tar": 1}


def test_large_images_are_resized_and_other_formats_reencoded(tmp_path: Path, tiny_params: Params) -> None:
    src = tmp_path / "src"
    big = replace(sample("big", uid_of(1)), "jpg", image_bytes(300, 120))
    png = replace(sample("png", uid_of(2)), "jpg", image_bytes(40, 30, fmt="PNG"))
    small = sample("small", uid_of(3))
    write_tar(src / "00000.tar", [*big, *png, *small])

    outcome = run_ingest(source_params(tiny_params, src, "datacomp_pool.max_image_side=100"), tmp_path / "out")

    rows = outcome.manifest.set_index("uid")
    assert tuple(rows.loc[uid_of(1), ["width", "height", "original_width", "original_height"]]) == (100, 40, 300, 120)
    assert tuple(rows.loc[uid_of(2), ["width", "height"]]) == (40, 30)
    assert outcome.summary["resized"] == 1
    samples = {s.key: s for s in read_samples(tmp_path / "out" / "shards" / "00000.tar")}
    for uid, size in ((uid_of(1), (100, 40)), (uid_of(2), (40, 30))):
        with Image.open(io.BytesIO(samples[uid].jpg)) as image:
            assert image.format == "JPEG" and image.size == size
    assert samples[uid_of(1)].meta["original_width"] == 300
    assert samples[uid_of(3)].jpg == small[0][1]  # untouched bytes when nothing needed doing


def test_metadata_is_joined_by_uid_and_shard_parquet_supplies_missing_uids(tmp_path: Path, tiny_params: Params) -> None:
    src = tmp_path / "src"
    write_tar(
        src / "shards" / "00000.tar",
        [*sample("k1", uid_of(1)), *sample("k2", None), *sample("k3", uid_of(3), url=None, sha256="NOT-A-DIGEST")],
    )
    # img2dataset's parquet beside the tar knows k2's uid although its json does not.
    pd.DataFrame({"key": ["k1", "k2", "k3"], "uid": [uid_of(1), uid_of(2), uid_of(3)]}).to_parquet(
        src / "shards" / "00000.parquet"
    )
    pd.DataFrame(
        {
            "uid": [uid_of(1), uid_of(2), uid_of(9)],
            "url": ["http://meta/1", "http://meta/2", "http://meta/9"],
            "text": ["t1", "t2", "t9"],
            "original_width": [640, 800, 10],
            "original_height": [480, 600, 10],
            "sha256": ["a" * 64, "b" * 64, "c" * 64],
            "clip_b32_similarity_score": [0.31, 0.22, 0.1],
            "clip_l14_similarity_score": [0.27, 0.19, 0.1],
        }
    ).to_parquet(src / "metadata.parquet")
    pd.DataFrame({"not_uid": [1]}).to_parquet(src / "stats.parquet")  # not metadata: ignored, listed

    outcome = run_ingest(source_params(tiny_params, src), tmp_path / "out")

    rows = outcome.manifest.set_index("uid")
    assert list(rows.index) == [uid_of(1), uid_of(2), uid_of(3)]
    assert rows.loc[uid_of(1), "clip_b32_similarity_score"] == pytest.approx(0.31)
    assert rows.loc[uid_of(2), "clip_l14_similarity_score"] == pytest.approx(0.19)
    assert (rows.loc[uid_of(1), "original_width"], rows.loc[uid_of(1), "original_height"]) == (640, 480)
    assert rows.loc[uid_of(1), "sha256"] == "a" * 64
    # The sample's own json wins over metadata where both know a field.
    assert rows.loc[uid_of(1), "url"] == "http://example.com/k1.jpg"
    # No metadata row: scores unknown (NaN), size from the decoded image.
    assert math.isnan(rows.loc[uid_of(3), "clip_b32_similarity_score"])
    assert (rows.loc[uid_of(3), "original_width"], rows.loc[uid_of(3), "original_height"]) == (64, 48)
    # Nobody knows k3's url; its claimed sha256 is no digest, so the bytes are hashed instead.
    assert rows.loc[uid_of(3), "url"] == ""
    assert rows.loc[uid_of(3), "sha256"] == hashlib.sha256(image_bytes(64, 48)).hexdigest()
    summary = outcome.summary
    assert summary["metadata_files"] == ["metadata.parquet"]
    assert summary["metadata_files_ignored"] == ["stats.parquet"]
    assert summary["metadata_rows_without_sample"] == 1
    assert summary["samples_without_metadata"] == 1


def test_missing_or_empty_sources_fail_naming_the_source(tmp_path: Path, tiny_params: Params) -> None:
    missing = tmp_path / "no-such-pool"
    with pytest.raises(ingest.PoolSourceError, match="no-such-pool"):
        run_ingest(source_params(tiny_params, missing), tmp_path / "out1")
    empty = tmp_path / "empty-pool"
    (empty / "shards").mkdir(parents=True)
    (empty / "README.txt").write_text("nothing here")
    with pytest.raises(ingest.PoolSourceError, match=r"empty-pool.*holds no \.tar shards"):
        run_ingest(source_params(tiny_params, empty), tmp_path / "out2")


def test_a_pool_with_no_usable_sample_is_an_error(tmp_path: Path, tiny_params: Params) -> None:
    src = tmp_path / "src"
    write_tar(src / "00000.tar", without(sample("a", uid_of(1)), "jpg"))
    with pytest.raises(ValueError, match="ingested no sample"):
        run_ingest(source_params(tiny_params, src), tmp_path / "out")


def test_s3_source_missing_bucket_names_the_source(tmp_path: Path, tiny_params: Params, moto_s3: str) -> None:
    params = source_params(tiny_params, "s3://no-such-bucket/pool", f"lake.endpoint_url={moto_s3}")
    with pytest.raises(StorageError, match=r"s3://no-such-bucket/pool.*NoSuchBucket"):
        run_ingest(params, tmp_path / "out")


def test_unreadable_parquets_next_to_the_pool(tmp_path: Path, tiny_params: Params) -> None:
    src = tmp_path / "src"
    write_tar(src / "shards" / "00000.tar", [*sample("k1", uid_of(1))])
    (src / "shards" / "00000.parquet").write_bytes(b"PAR1 garbage")
    # A broken per-shard parquet only loses a uid fallback: listed, not fatal.
    outcome = run_ingest(source_params(tiny_params, src), tmp_path / "out1")
    assert list(outcome.manifest["uid"]) == [uid_of(1)]
    assert outcome.summary["unreadable_shard_parquets"] == ["shards/00000.parquet"]
    # Broken metadata would silently drop every score: that is an error naming the file.
    (src / "metadata.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(ValueError, match=r"metadata\.parquet .* is unreadable"):
        run_ingest(source_params(tiny_params, src), tmp_path / "out2")
