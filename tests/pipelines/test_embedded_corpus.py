"""The embedded corpus: determinism, DataComp/img2dataset/clip_benchmark formats, caption mix."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from clipforge.stage_api import StageContext
from pipelines import embedded_corpus as ec
from pipelines.embedded import captions, render, scenes, translations
from pipelines.embedded.benchmark import RETRIEVAL_CAPTIONS
from pipelines.embedded.streams import BENCHMARK_STREAM, POOL_STREAM, TEACHER_STREAM, stream_rng
from tests.conftest import default_params, section
from training.data.tar_shards import iter_tar_samples

CFG = section(
    "embedded_corpus", seed=3, pool_size=100, teacher_corpus_size=30, benchmark_size=16, image_size=48, shard_size=40
)
DATACOMP_COLUMNS = [
    "uid",
    "url",
    "text",
    "original_width",
    "original_height",
    "sha256",
    "clip_b32_similarity_score",
    "clip_l14_similarity_score",
    "face_bboxes",
]


@pytest.fixture(scope="module")
def pool_generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("pool")
    return out, ec.generate_pool(out, CFG)


@pytest.fixture(scope="module")
def pool_dir(pool_generated: tuple[Path, pd.DataFrame]) -> Path:
    return pool_generated[0]


@pytest.fixture(scope="module")
def pool_frame(pool_generated: tuple[Path, pd.DataFrame]) -> pd.DataFrame:
    return pool_generated[1]


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    ec.generate_benchmark(out, CFG)
    return out


def _tar_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.tar"))}


# ---------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_differs(pool_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    ec.generate_pool(again, CFG)
    assert _tar_bytes(again) == _tar_bytes(pool_dir)
    pd.testing.assert_frame_equal(
        pd.read_parquet(again / "metadata.parquet"), pd.read_parquet(pool_dir / "metadata.parquet")
    )

    other = tmp_path / "other"
    ec.generate_pool(other, CFG.model_copy(update={"seed": 4}))
    meta_a, meta_b = pd.read_parquet(pool_dir / "metadata.parquet"), pd.read_parquet(other / "metadata.parquet")
    assert not set(meta_a["uid"]) & set(meta_b["uid"])
    assert set(meta_a["sha256"]).isdisjoint(meta_b["sha256"])


def test_benchmark_deterministic_and_independent_of_pool_size(bench_dir: Path, tmp_path: Path) -> None:
    # Its own stream: a bigger pool or teacher corpus must not change the held-out set.
    again = tmp_path / "bench"
    ec.generate_benchmark(again, CFG.model_copy(update={"pool_size": 7, "teacher_corpus_size": 5}))
    assert _tar_bytes(again) == _tar_bytes(bench_dir)


def test_streams_differ_between_parts(pool_dir: Path, bench_dir: Path, tmp_path: Path) -> None:
    streams = (POOL_STREAM, TEACHER_STREAM, BENCHMARK_STREAM)
    assert len(set(streams)) == 3
    first_draws = {tuple(stream_rng(CFG.seed, s).integers(0, 2**31, size=4)) for s in streams}
    assert len(first_draws) == 3
    ec.generate_teacher_corpus(tmp_path / "shards", CFG, relative_to=tmp_path)
    # Resizing the pool or the benchmark leaves the teacher corpus byte-identical.
    ec.generate_teacher_corpus(
        tmp_path / "again" / "shards",
        CFG.model_copy(update={"pool_size": 3, "benchmark_size": 2}),
        relative_to=tmp_path,
    )
    assert _tar_bytes(tmp_path / "again") == {k: v for k, v in _tar_bytes(tmp_path).items() if "again" not in k}
    teacher_hashes = {
        hashlib.sha256(s["jpg"]).hexdigest()
        for t in (tmp_path / "shards").glob("*.tar")
        for _, s in iter_tar_samples(t)
    }
    pool_hashes = set(pd.read_parquet(pool_dir / "metadata.parquet")["sha256"])
    bench_hashes = {hashlib.sha256(s["jpg"]).hexdigest() for _, s in iter_tar_samples(bench_dir / "shape/test/0.tar")}
    assert len(teacher_hashes) == CFG.teacher_corpus_size
    assert teacher_hashes.isdisjoint(pool_hashes)
    assert teacher_hashes.isdisjoint(bench_hashes)


# ---------------------------------------------------------------- pool format


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


# ---------------------------------------------------------------- pool content


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


# ---------------------------------------------------------------- teacher corpus


def test_teacher_corpus_members_and_attributes(tmp_path: Path) -> None:
    frame = ec.generate_teacher_corpus(tmp_path / "shards", CFG, relative_to=tmp_path)
    tars = sorted((tmp_path / "shards").glob("*.tar"))
    assert [t.name for t in tars] == ["00000.tar"]  # 30 samples, shard size 40
    samples = list(iter_tar_samples(tars[0]))
    assert len(samples) == len(frame) == CFG.teacher_corpus_size
    for _, sample in samples:
        attrs = json.loads(sample["json"])
        caption = sample["txt"].decode("utf-8")
        assert attrs["caption"] == caption
        assert attrs["main"]["shape"] in scenes.SHAPES and attrs["texture"] in scenes.TEXTURES
        assert attrs["main"]["color"] in caption.split()
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            assert image.size == (CFG.image_size, CFG.image_size)


# ---------------------------------------------------------------- benchmark


def test_benchmark_layout_is_clip_benchmark(bench_dir: Path) -> None:
    tasks = json.loads((bench_dir / "tasks.json").read_text())
    assert [(t["name"], t["type"]) for t in tasks] == [
        ("shape", "classification"),
        ("color", "classification"),
        ("count", "classification"),
        ("background", "classification"),
        ("retrieval", "retrieval"),
    ]
    for task in tasks:
        folder = bench_dir / task["name"]
        assert (folder / "test" / "nshards.txt").read_text().strip() == "1"
        assert (folder / "dataset_type.txt").read_text().strip() == task["type"]
        samples = list(iter_tar_samples(folder / "test" / "0.tar"))
        assert len(samples) == CFG.benchmark_size
        assert all(re.fullmatch(r"s\d{7}", key) for key, _ in samples)
        if task["type"] == "classification":
            classnames = (folder / "classnames.txt").read_text().splitlines()
            templates = (folder / "zeroshot_classification_templates.txt").read_text().splitlines()
            assert len(classnames) == len(set(classnames)) >= 4
            assert templates and all("{c}" in t for t in templates)
            labels = [int(s["cls"].decode()) for _, s in samples]
            # 16 samples, balanced: every class index appears, none outside the range.
            assert set(labels) == set(range(len(classnames)))
        else:
            for _, s in samples:
                captions = s["txt"].decode("utf-8").splitlines()
                assert len(captions) == RETRIEVAL_CAPTIONS == len(set(captions))
    assert (bench_dir / "count" / "classnames.txt").read_text().splitlines() == ["one", "two", "three", "four"]


def test_benchmark_readable_like_clip_benchmark(bench_dir: Path) -> None:
    # The reader clip_benchmark builds for webdataset eval sets (decode images, cls / txt lines).
    handler = wds.autodecode.ImageHandler("pil", extensions=["webp", "png", "jpg", "jpeg"])
    cls_set = (
        wds.WebDataset(str(bench_dir / "color/test/{0..0}.tar"), shardshuffle=False, empty_check=False)
        .decode(handler)
        .to_tuple(["webp", "png", "jpg", "jpeg"], "cls")
    )
    items = list(cls_set)
    assert len(items) == CFG.benchmark_size and all(isinstance(c, int) for _, c in items)
    ret_set = (
        wds.WebDataset(str(bench_dir / "retrieval/test/{0..0}.tar"), shardshuffle=False, empty_check=False)
        .decode(handler)
        .to_tuple(["webp", "png", "jpg", "jpeg"], "txt")
        .map_tuple(None, str.splitlines)
    )
    assert all(len(caps) == 5 for _, caps in ret_set)


def test_color_labels_match_pixels(bench_dir: Path) -> None:
    classnames = (bench_dir / "color/classnames.txt").read_text().splitlines()
    for _, sample in iter_tar_samples(bench_dir / "color/test/0.tar"):
        rgb = np.asarray(scenes.COLORS[classnames[int(sample["cls"].decode())]], dtype=float)
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3)  # [H*W, 3]
        near = np.linalg.norm(pixels - rgb, axis=1) < 45
        # Even a small star (radius ~4 px at 48 px) keeps over 20 pixels of its colour; a
        # shifted label finds 12 pixels of its colour in under 1 image of 10.
        assert near.sum() >= 12


# ---------------------------------------------------------------- the stage


def test_run_writes_everything(tmp_path: Path) -> None:
    ctx = StageContext(
        name="embedded_corpus",
        params=default_params().model_copy(update={"embedded_corpus": CFG}),
        inputs={},
        out_dir=tmp_path,
        show_progress=False,
    )
    outcome = ec.run(ctx)
    manifest = outcome.manifest
    assert {"split", "key", "caption", "width", "height"} <= set(manifest.columns)
    counts = manifest["split"].value_counts().to_dict()
    assert counts.pop("pool") == CFG.pool_size
    assert counts.pop("teacher") == CFG.teacher_corpus_size
    assert counts == {
        f"benchmark/{t}": CFG.benchmark_size for t in ("shape", "color", "count", "background", "retrieval")
    }
    assert all((tmp_path / shard).is_file() for shard in manifest["shard"].unique())
    assert (tmp_path / "pool/metadata.parquet").is_file() and (tmp_path / "benchmark/tasks.json").is_file()
    truth = pd.read_parquet(tmp_path / ec.GROUND_TRUTH_FILE)
    assert len(truth) == CFG.pool_size and set(truth["caption_kind"]) == set(captions.CAPTION_KINDS)
    assert sum(outcome.summary["pool"]["caption_kinds"].values()) == CFG.pool_size
    assert outcome.metrics["samples_pool"] == CFG.pool_size
    assert set(outcome.previews) >= {"pool_grid", "teacher_grid"}
    for rel in outcome.previews.values():
        with Image.open(tmp_path / rel) as image:
            assert image.format == "PNG" and image.width > 100


# ---------------------------------------------------------------- scenes


def test_scene_layout_inside_canvas_without_overlap() -> None:
    rng = np.random.default_rng(0)
    for width, height in [(48, 48), (30, 26), (200, 45), (40, 190)]:
        for _ in range(60):
            scene = scenes.sample_scene(rng, width, height)
            short = min(width, height)
            pts = [(p.cx * width, p.cy * height, p.radius * short) for p in scene.placements]
            assert len(pts) == scene.main.count + (1 if scene.extra else 0)
            for x, y, r in pts:
                assert r <= x <= width - r and r <= y <= height - r
            for i, (x, y, r) in enumerate(pts):
                for x2, y2, r2 in pts[i + 1 :]:
                    assert np.hypot(x - x2, y - y2) >= r + r2
            assert scene.background not in {scene.main.color, scene.extra.color if scene.extra else None}
            image = render.render_scene(scene, width, height)
            assert image.size == (width, height)
            assert image.tobytes() == render.render_scene(scene, width, height).tobytes()
