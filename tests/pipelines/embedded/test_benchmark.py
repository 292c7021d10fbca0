"""The held-out benchmark in clip_benchmark's layout, readable as clip_benchmark reads it."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from pipelines.embedded import scenes
from pipelines.embedded.benchmark import RETRIEVAL_CAPTIONS
from tests.pipelines.embedded.conftest import CFG
from training.data.tar_shards import iter_tar_samples


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
