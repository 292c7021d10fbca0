"""Stage ``embedded_corpus``: a generated corpus standing in for the web (no network needed).

Three parts, each from its own random stream of ``embedded_corpus.seed`` so that resizing
one never changes another:

- ``pool/``: a DataComp-format pool (``metadata.parquet`` + img2dataset shards) whose captions
  behave like alt-text: full, partial, wrong, junk and non-English, plus tiny images, extreme
  aspect ratios and exact duplicates, in the fractions the config sets;
- ``teacher_corpus/shards/``: a larger clean corpus (full captions, scene attributes) that
  bootstraps teachers and the captioner;
- ``benchmark/``: held-out zero-shot tasks in clip_benchmark's webdataset layout
  (classification: shape, color, count, background; retrieval with 5 captions per image);
- ``validation/``: the same tasks from another random stream, to tune on (the benchmark is
  for reporting, never for choosing).

The generator is ``pipelines.embedded``; formats are those of docs/stages.md. Tars are written byte-for-byte deterministically
(fixed member metadata), so the same seed gives identical files.
"""

from __future__ import annotations

import time
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import Any

import pandas as pd

from clipforge.config import Params
from clipforge.gates.rules import Suite, positive, regex
from clipforge.stage_api import StageContext, StageOutcome
from pipelines.embedded import captions
from pipelines.embedded.benchmark import CLASSIFICATION_TASKS, RETRIEVAL_TASK, generate_benchmark
from pipelines.embedded.pool import generate_pool
from pipelines.embedded.streams import VALIDATION_STREAM
from pipelines.embedded.teacher_corpus import generate_teacher_corpus
from pipelines.pool.shards import open_rgb
from pipelines.previews import image_grid
from training.data.benchmark import CLASSNAMES_FILE
from training.data.embedded_layout import BENCHMARK_DIR, POOL_DIR, TEACHER_SHARDS_DIR, VALIDATION_DIR
from training.data.tar_shards import iter_tar_samples

# Stage-level (not inside pool/, which must look exactly like a DataComp download).
GROUND_TRUTH_FILE = "pool_ground_truth.parquet"
GROUND_TRUTH_COLUMNS = ["uid", "key", "caption_kind", "image_kind", "language", "duplicate_of", "scene"]


def quality_suite(params: Params) -> Suite:
    """One row per generated sample, keyed by split and key."""
    return Suite(
        required=("split", "key", "caption", "width", "height"),
        unique=(("split", "key"),),
        rules=(
            regex(
                "split",
                r"^(?:pool|teacher|benchmark/.+|validation/.+)$",
                "split is pool, teacher, benchmark/<task> or validation/<task>",
            ),
            positive("width"),
            positive("height"),
        ),
    )


def _first_samples(shard: Path, limit: int) -> list[tuple[str, dict[str, bytes]]]:
    return list(islice(iter_tar_samples(shard), limit))


def write_previews(out_dir: Path, pool: pd.DataFrame, count: int = 16) -> dict[str, str]:
    """Grids of the first pool, teacher and benchmark samples, read back from the written shards."""
    previews_dir = out_dir / "previews"
    previews: dict[str, str] = {}

    kinds = dict(zip(pool["key"], pool["caption_kind"], strict=True))
    samples = _first_samples(out_dir / POOL_DIR / pool["shard"].iloc[0], count)
    images = [open_rgb(s["jpg"]) for _, s in samples]
    captions = [
        [s["txt"].decode("utf-8"), f"{kinds[key]}, {im.width}x{im.height}"]
        for (key, s), im in zip(samples, images, strict=True)
    ]
    image_grid(images, captions, previews_dir / "pool_grid.png")
    previews["pool_grid"] = "previews/pool_grid.png"

    teacher_shard = sorted((out_dir / TEACHER_SHARDS_DIR).glob("*.tar"))
    if teacher_shard:
        samples = _first_samples(teacher_shard[0], count)
        image_grid(
            [open_rgb(s["jpg"]) for _, s in samples],
            [s["txt"].decode("utf-8") for _, s in samples],
            previews_dir / "teacher_grid.png",
        )
        previews["teacher_grid"] = "previews/teacher_grid.png"

    images, captions = [], []
    for task in CLASSIFICATION_TASKS:
        names = (out_dir / BENCHMARK_DIR / task.name / CLASSNAMES_FILE).read_text(encoding="utf-8").splitlines()
        for _, s in _first_samples(out_dir / BENCHMARK_DIR / task.name / "test" / "0.tar", 2):
            images.append(open_rgb(s["jpg"]))
            captions.append(f"{task.name}: {names[int(s['cls'].decode())]}")
    for _, s in _first_samples(out_dir / BENCHMARK_DIR / RETRIEVAL_TASK / "test" / "0.tar", 4):
        images.append(open_rgb(s["jpg"]))
        captions.append(s["txt"].decode("utf-8").splitlines()[:2])
    image_grid(images, captions, previews_dir / "benchmark_grid.png")
    previews["benchmark_grid"] = "previews/benchmark_grid.png"
    return previews


def run(ctx: StageContext) -> StageOutcome:
    cfg = ctx.params.embedded_corpus
    out = ctx.out_dir
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    pool = generate_pool(out / POOL_DIR, cfg, progress=ctx.progress)
    # What each pool sample really is, for measuring the filters downstream.
    pool[GROUND_TRUTH_COLUMNS].to_parquet(out / GROUND_TRUTH_FILE, index=False)
    seconds["pool"] = time.perf_counter() - started

    started = time.perf_counter()
    teacher = generate_teacher_corpus(out / TEACHER_SHARDS_DIR, cfg, relative_to=out, progress=ctx.progress)
    seconds["teacher"] = time.perf_counter() - started

    started = time.perf_counter()
    bench = generate_benchmark(out / BENCHMARK_DIR, cfg, progress=ctx.progress)
    seconds["benchmark"] = time.perf_counter() - started
    started = time.perf_counter()
    validation = generate_benchmark(out / VALIDATION_DIR, cfg, progress=ctx.progress, stream=VALIDATION_STREAM)
    seconds["validation"] = time.perf_counter() - started

    started = time.perf_counter()
    previews = write_previews(out, pool)
    seconds["previews"] = time.perf_counter() - started

    columns = ["split", "key", "caption", "width", "height", "caption_kind", "label", "shard"]
    manifest = pd.concat(
        [
            pool.assign(split="pool", caption=pool["text"], label="", shard=POOL_DIR + "/" + pool["shard"])[columns],
            teacher.assign(split="teacher", caption_kind="full", label="")[columns],
            *(
                frame.assign(
                    split=f"{folder}/" + frame["task"], caption_kind="full", shard=f"{folder}/" + frame["shard"]
                )[columns]
                for folder, frame in ((BENCHMARK_DIR, bench), (VALIDATION_DIR, validation))
            ),
        ],
        ignore_index=True,
    )

    caption_kinds = Counter(pool["caption_kind"])
    summary: dict[str, Any] = {
        "samples": {split: int(c) for split, c in manifest["split"].value_counts(sort=False).items()},
        "pool": {
            "samples": len(pool),
            "shards": int(pool["shard"].nunique()),
            "caption_kinds": {k: int(caption_kinds.get(k, 0)) for k in captions.CAPTION_KINDS},
            "image_kinds": {k: int(v) for k, v in Counter(pool["image_kind"]).items()},
            "languages": {k: int(v) for k, v in Counter(pool.loc[pool["language"] != "", "language"]).items()},
            "duplicates": int((pool["duplicate_of"] != "").sum()),
            "empty_captions": int((pool["text"] == "").sum()),
        },
        "teacher": {"samples": len(teacher), "shards": int(teacher["shard"].nunique())},
        "benchmark": {
            "tasks": [t.name for t in CLASSIFICATION_TASKS] + [RETRIEVAL_TASK],
            "samples_per_task": cfg.benchmark_size,
            "classes": {t.name: len(t.classnames) for t in CLASSIFICATION_TASKS},
        },
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    metrics: dict[str, float] = {
        "samples_pool": float(len(pool)),
        "samples_teacher": float(len(teacher)),
        "samples_benchmark": float(len(bench)),
        "samples_validation": float(len(validation)),
        "pool_duplicates": float(summary["pool"]["duplicates"]),
        **{f"pool_fraction_{k}": caption_kinds.get(k, 0) / max(1, len(pool)) for k in captions.CAPTION_KINDS},
        "generation_seconds": float(sum(seconds.values())),
    }
    return StageOutcome(manifest=manifest, summary=summary, metrics=metrics, previews=previews)
