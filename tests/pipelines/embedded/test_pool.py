"""The generated pool is a DataComp download: metadata, img2dataset shards, web-like captions."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from pipelines import embedded_corpus as ec
from pipelines.embedded import scenes, translations
from tests.pipelines.embedded.conftest import CFG, DATACOMP_COLUMNS
from training.data.tar_shards import iter_tar_samples


def test_pool_metadata_is_datacomp(pool_dir: Path, pool_frame: pd.DataFrame) -> None:
    # The pool folder holds exactly what a DataComp download holds: no ground truth.
    assert sorted(p.name for p in pool_dir.iterdir()) == ["metadata.parquet", "shards"]
    meta = pd.read_parquet(pool_dir / "metadata.parquet")
    assert list(meta.columns) == DATACOMP_COLUMNS
    pd.testing.assert_frame_equal(meta, pool_frame[DATACOMP_COLUMNS])
    assert len(meta) == CFG.pool_size
    assert meta["uid"].is_unique
    assert meta["uid"].str.fullmatch(r"[0-9a-f]{32}").all()
    assert meta["url"].is_unique
    assert meta["url"].str.fullmatch(r"http://example\.invalid/img/\d+\.jpg").all()
    assert all(len(boxes) == 0 for boxes in meta["face_bboxes"])
    for col in ("clip_b32_similarity_score", "clip_l14_similarity_score"):
        assert meta[col].between(-1, 1).all()


def test_pool_shards_are_img2dataset(pool_dir: Path) -> None:
    meta = pd.read_parquet(pool_dir / "metadata.parquet").set_index("uid")
    tars = sorted((pool_dir / "shards").glob("*.tar"))
    assert [t.name for t in tars] == ["00000000.tar", "00000001.tar", "00000002.tar"]
    seen = 0
    for tar_path in tars:
        with tarfile.open(tar_path) as tar:
            names = tar.getnames()
        # Members of one sample are adjacent, in jpg/txt/json order, keys without dots.
        assert len(names) % 3 == 0
        for i in range(0, len(names), 3):
            key = names[i].split(".")[0]
            assert names[i : i + 3] == [f"{key}.jpg", f"{key}.txt", f"{key}.json"]
        side = pd.read_parquet(tar_path.with_suffix(".parquet"))
        assert {"key", "uid", "url", "caption", "width", "height", "status"} <= set(side.columns)
        samples = list(iter_tar_samples(tar_path))
        assert side["key"].tolist() == [key for key, _ in samples]
        for _, sample in samples:
            info = json.loads(sample["json"])
            assert {
                "uid",
                "url",
                "caption",
                "width",
                "height",
                "original_width",
                "original_height",
                "sha256",
                "status",
            } <= set(info)
            assert info["status"] == "success"
            assert info["sha256"] == hashlib.sha256(sample["jpg"]).hexdigest()
            assert sample["txt"].decode("utf-8") == info["caption"]
            row = meta.loc[info["uid"]]
            assert row["text"] == info["caption"] and row["sha256"] == info["sha256"]
            with Image.open(io.BytesIO(sample["jpg"])) as image:
                assert image.format == "JPEG"
                assert image.size == (info["width"], info["height"])
                assert image.size == (row["original_width"], row["original_height"])
            seen += 1
    assert seen == CFG.pool_size


def test_pool_readable_with_webdataset(pool_dir: Path) -> None:
    urls = [str(p) for p in sorted((pool_dir / "shards").glob("*.tar"))]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil").to_tuple("jpg", "txt", "json")
    items = list(dataset)
    assert len(items) == CFG.pool_size
    assert all(isinstance(img, Image.Image) and isinstance(txt, str) for img, txt, _ in items)


def test_caption_kinds_follow_config(pool_frame: pd.DataFrame) -> None:
    n = CFG.pool_size
    counts = pool_frame["caption_kind"].value_counts()
    assert counts["junk"] == round(CFG.junk_caption_fraction * n)
    assert counts["wrong"] == round(CFG.wrong_caption_fraction * n)
    assert counts["non_english"] == round(CFG.non_english_fraction * n)
    assert counts["partial"] == round(CFG.partial_caption_fraction * n)
    assert counts["full"] == n - counts.drop("full").sum()
    # Clean captions get higher synthetic CLIP scores than junk and wrong ones.
    mean = pool_frame.groupby("caption_kind")["clip_b32_similarity_score"].mean()
    assert mean["full"] > mean["wrong"] + 0.05 and mean["full"] > mean["junk"] + 0.05


def test_captions_describe_their_scene(pool_frame: pd.DataFrame) -> None:
    # English shape words ("triangle" is French too) and "background" must not appear.
    english = ({*scenes.SHAPE_PLURALS.values(), *scenes.SHAPES} - {"triangle", "triangles"}) | {"background"}
    for row in pool_frame.itertuples():
        scene = json.loads(row.scene)
        words = set(row.text.lower().split())
        main = scene["main"]
        if row.caption_kind == "full":
            assert main["color"] in words and scene["background"] in words
            assert {main["shape"], scenes.SHAPE_PLURALS[main["shape"]]} & words
        elif row.caption_kind == "non_english":
            assert not words & english, row.text
            assert row.language in translations.LANGUAGES
        elif row.caption_kind == "junk":
            assert not words & english, row.text


def test_tiny_extreme_and_duplicates(pool_frame: pd.DataFrame) -> None:
    tiny = pool_frame[pool_frame["image_kind"] == "tiny"]
    extreme = pool_frame[pool_frame["image_kind"] == "extreme"]
    assert len(tiny) >= 2 and len(extreme) >= 2
    assert (tiny[["original_width", "original_height"]].max(axis=1) <= 40).all()
    ratio = extreme[["original_width", "original_height"]].max(axis=1) / extreme[
        ["original_width", "original_height"]
    ].min(axis=1)
    assert (ratio >= 3.9).all()
    normal = pool_frame[pool_frame["image_kind"] == "normal"]
    assert (normal[["original_width", "original_height"]].min(axis=1) >= CFG.image_size).all()

    copies = pool_frame[pool_frame["duplicate_of"] != ""]
    assert len(copies) == round(CFG.duplicate_fraction * CFG.pool_size)
    by_uid = pool_frame.set_index("uid")
    for row in copies.itertuples():
        source = by_uid.loc[row.duplicate_of]
        assert row.sha256 == source["sha256"] and row.url != source["url"]


def test_fractions_over_one_raise(tmp_path: Path) -> None:
    bad = CFG.model_copy(update={"junk_caption_fraction": 0.6, "partial_caption_fraction": 0.6})
    with pytest.raises(ValueError, match="add up to more than 1"):
        ec.generate_pool(tmp_path, bad)
