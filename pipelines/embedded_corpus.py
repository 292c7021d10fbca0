"""Stage ``embedded_corpus``: a generated corpus standing in for the web (no network needed).

Three parts, each from its own random stream of ``embedded_corpus.seed`` so that resizing
one never changes another:

- ``pool/``: a DataComp-format pool (``metadata.parquet`` + img2dataset shards) whose captions
  behave like alt-text: full, partial, wrong, junk and non-English, plus tiny images, extreme
  aspect ratios and exact duplicates, in the fractions the config sets;
- ``teacher_corpus/shards/``: a larger clean corpus (full captions, scene attributes) that
  bootstraps teachers and the captioner;
- ``benchmark/``: held-out zero-shot tasks in clip_benchmark's webdataset layout
  (classification: shape, color, count, background; retrieval with 5 captions per image).

Formats are those of docs/stages.md. Tars are written byte-for-byte deterministically
(fixed member metadata), so the same seed gives identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from clipforge.config import EmbeddedCorpusConfig
from clipforge.stage_api import StageContext, StageOutcome
from pipelines import scenes
from pipelines.previews import image_grid
from training.data.tar_shards import ShardWriter, iter_tar_samples

T = TypeVar("T")
ProgressFn = Callable[[Iterable[Any], str, int | None], Iterator[Any]]

# Independent random streams per part (numpy SeedSequence entropy [seed, stream, ...]).
POOL_STREAM = 1
TEACHER_STREAM = 2
BENCHMARK_STREAM = 3

POOL_DIR = "pool"
TEACHER_DIR = "teacher_corpus"
BENCHMARK_DIR = "benchmark"
METADATA_FILE = "metadata.parquet"
# Stage-level (not inside pool/, which must look exactly like a DataComp download).
GROUND_TRUTH_FILE = "pool_ground_truth.parquet"
GROUND_TRUTH_COLUMNS = ["uid", "key", "caption_kind", "image_kind", "language", "duplicate_of", "scene"]
TASKS_FILE = "tasks.json"
RETRIEVAL_CAPTIONS = 5
URL_TEMPLATE = "http://example.invalid/img/{n}.jpg"

# Synthetic CLIP image-text similarity per caption kind (mean, before N(0, 0.035) noise):
# clean captions score high, junk low, like DataComp's B/32 scores.
_SCORE_MEAN = {"full": 0.33, "partial": 0.29, "non_english": 0.20, "wrong": 0.16, "junk": 0.11}

METADATA_SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("url", pa.string()),
        ("text", pa.string()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("sha256", pa.string()),
        ("clip_b32_similarity_score", pa.float64()),
        ("clip_l14_similarity_score", pa.float64()),
        ("face_bboxes", pa.list_(pa.list_(pa.float64()))),
    ]
)
SHARD_PARQUET_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("uid", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("original_width", pa.int64()),
        ("original_height", pa.int64()),
        ("sha256", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
    ]
)


@dataclass(frozen=True)
class ClassificationTask:
    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]


CLASSIFICATION_TASKS: tuple[ClassificationTask, ...] = (
    ClassificationTask(
        "shape",
        scenes.SHAPES,
        ("a photo of a {c}.", "a picture of a {c}.", "a drawing of a {c}.", "a {c} on a background.", "a {c} shape."),
    ),
    ClassificationTask(
        "color",
        scenes.COLOR_NAMES,
        (
            "a photo of a {c} shape.",
            "a picture of a {c} object.",
            "a drawing of a {c} shape.",
            "a {c} shape on a background.",
        ),
    ),
    ClassificationTask(
        "count",
        scenes.COUNT_WORDS,
        (
            "a picture of {c} shapes.",
            "a photo of {c} objects.",
            "a drawing of {c} shapes.",
            "{c} shapes on a background.",
        ),
    ),
    ClassificationTask(
        "background",
        scenes.TEXTURES,
        (
            "a picture of shapes on a {c} background.",
            "a photo of a {c} background.",
            "shapes on a {c} background.",
            "a drawing on a {c} background.",
        ),
    ),
)
RETRIEVAL_TASK = "retrieval"


# ---------------------------------------------------------------- small helpers


def stream_rng(seed: int, *stream: int) -> np.random.Generator:
    """The generator of one part of the corpus: ``[seed, *stream]`` as SeedSequence entropy."""
    if seed < 0:
        raise ValueError(f"embedded_corpus.seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, *stream])


def _no_progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    return iter(items)


def _tqdm_progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    from tqdm.auto import tqdm

    return iter(tqdm(items, desc=f"embedded_corpus: {desc}", total=total))


def _progress_fn(show_progress: bool, progress: ProgressFn | None) -> ProgressFn:
    if progress is not None:
        return progress
    return _tqdm_progress if show_progress else _no_progress


def encode_jpeg(image: Image.Image, quality: int = 92) -> bytes:
    # 4:4:4 chroma keeps small coloured shapes their colour (4:2:0 bleeds at 24-96 px).
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")


def _exact_counts(rng: np.random.Generator, n: int, fractions: dict[str, float], rest: str) -> np.ndarray:
    """``n`` labels: round(f * n) of each fractional label, ``rest`` for the remainder, shuffled."""
    counts = {label: round(f * n) for label, f in fractions.items()}
    if sum(counts.values()) > n:
        raise ValueError(
            f"embedded_corpus fractions {fractions} add up to more than 1 ({sum(fractions.values()):.3f}); lower some"
        )
    labels = [label for label, c in counts.items() for _ in range(c)]
    labels += [rest] * (n - len(labels))
    return rng.permutation(np.asarray(labels, dtype=object))


# ---------------------------------------------------------------- pool


def _pool_canvas(rng: np.random.Generator, image_kind: str, side: int) -> tuple[int, int]:
    if image_kind == "tiny":
        return int(rng.integers(24, 41)), int(rng.integers(24, 41))
    if image_kind == "extreme":
        short = max(8, round(side * rng.uniform(0.75, 1.0)))
        long = round(short * rng.uniform(4.0, 5.0))
        return (long, short) if rng.random() < 0.5 else (short, long)
    # Web images are rarely exactly square: up to 30% wider or taller than the canvas side.
    return round(side * rng.uniform(1.0, 1.3)), round(side * rng.uniform(1.0, 1.3))


def _pool_key(index: int, shard_size: int) -> str:
    # img2dataset keys: zero-padded shard number then zero-padded position in the shard.
    shard, pos = divmod(index, shard_size)
    width = max(4, len(str(shard_size - 1)))
    return f"{shard:05d}{pos:0{width}d}"


def _write_shard_parquet(tar_path: Path, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=SHARD_PARQUET_SCHEMA)
    pq.write_table(table, tar_path.with_suffix(".parquet"))


def generate_pool(
    out_dir: Path,
    cfg: EmbeddedCorpusConfig,
    show_progress: bool = False,
    *,
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """Write a DataComp-format pool: ``out_dir/metadata.parquet`` and ``out_dir/shards/*.tar|parquet``.

    Returns one row per sample: the metadata columns plus the ground truth that a real pool
    lacks (kept out of ``out_dir`` so the pool looks exactly like a DataComp download):
    ``key``, ``shard`` (relative to ``out_dir``), ``width``, ``height``, ``caption_kind``,
    ``image_kind``, ``language`` (de/fr/es or ""), ``duplicate_of`` (source uid or "") and
    ``scene`` (JSON attributes).
    """
    out_dir = Path(out_dir)
    progress_fn = _progress_fn(show_progress, progress)
    rng = stream_rng(cfg.seed, POOL_STREAM)
    n = cfg.pool_size
    if n < 1:
        raise ValueError(f"embedded_corpus.pool_size must be >= 1, got {n}")
    side = cfg.image_size

    caption_kinds = _exact_counts(
        rng,
        n,
        {
            "junk": cfg.junk_caption_fraction,
            "wrong": cfg.wrong_caption_fraction,
            "non_english": cfg.non_english_fraction,
            "partial": cfg.partial_caption_fraction,
        },
        "full",
    )
    image_kinds = _exact_counts(
        rng, n, {"tiny": cfg.tiny_image_fraction, "extreme": cfg.extreme_aspect_fraction}, "normal"
    )
    uids = [rng.bytes(16).hex() for _ in range(n)]
    if len(set(uids)) != n:  # pragma: no cover - 128 random bits
        raise RuntimeError("uid collision in the generated pool")
    # Exact duplicates: targets copy the image bytes of a source that is not itself a copy.
    n_dup = min(round(cfg.duplicate_fraction * n), n // 2)
    targets = rng.choice(n, size=n_dup, replace=False) if n_dup else np.zeros(0, dtype=int)
    originals = np.setdiff1d(np.arange(n), targets)
    duplicate_source = dict(zip(targets.tolist(), rng.choice(originals, size=n_dup).tolist(), strict=True))

    scene_of: dict[int, scenes.Scene] = {}
    jpeg_of: dict[int, bytes] = {}
    size_of: dict[int, tuple[int, int]] = {}
    for i in progress_fn(originals.tolist(), "pool images", len(originals)):
        w, h = _pool_canvas(rng, str(image_kinds[i]), side)
        scene = scenes.sample_scene(rng, w, h)
        scene_of[i], size_of[i] = scene, (w, h)
        jpeg_of[i] = encode_jpeg(scenes.render_scene(scene, w, h), quality=int(rng.integers(75, 96)))
    for target, source in duplicate_source.items():
        scene_of[target], size_of[target], jpeg_of[target] = scene_of[source], size_of[source], jpeg_of[source]
        image_kinds[target] = image_kinds[source]

    rows: list[dict[str, Any]] = []
    parquet_rows: dict[str, list[dict[str, Any]]] = {}  # shard -> its img2dataset parquet rows
    with ShardWriter(out_dir / "shards", out_dir, name_format="{:08d}.tar", max_count=cfg.shard_size) as writer:
        for i in progress_fn(range(n), "pool shards", n):
            kind = str(caption_kinds[i])
            scene, (w, h), jpg = scene_of[i], size_of[i], jpeg_of[i]
            language = ""
            if kind == "full":
                text = scenes.full_caption(scene, rng)
            elif kind == "partial":
                text = scenes.partial_caption(scene, rng)
            elif kind == "wrong":
                text = scenes.wrong_caption(scene, rng, w, h)
            elif kind == "junk":
                text = scenes.junk_caption(rng)
            else:
                language = str(rng.choice(scenes.LANGUAGES))
                text = scenes.translated_caption(scene, rng, language)
            b32 = _SCORE_MEAN[kind] + rng.normal(0.0, 0.035) - (0.02 if image_kinds[i] == "tiny" else 0.0)
            l14 = 0.9 * b32 - 0.02 + rng.normal(0.0, 0.02)
            key = _pool_key(i, cfg.shard_size)
            url = URL_TEMPLATE.format(n=i)
            sha = hashlib.sha256(jpg).hexdigest()
            sample_json = {
                "uid": uids[i],
                "url": url,
                "key": key,
                "caption": text,
                "width": w,
                "height": h,
                "original_width": w,
                "original_height": h,
                "sha256": sha,
                "status": "success",
                "error_message": None,
            }
            shard = writer.write(key, {"jpg": jpg, "txt": text.encode("utf-8"), "json": _json_bytes(sample_json)})
            parquet_rows.setdefault(shard, []).append({k: sample_json[k] for k in SHARD_PARQUET_SCHEMA.names})
            source = duplicate_source.get(i)
            rows.append(
                {
                    "uid": uids[i],
                    "url": url,
                    "text": text,
                    "original_width": w,
                    "original_height": h,
                    "sha256": sha,
                    "clip_b32_similarity_score": float(np.clip(b32, -1.0, 1.0)),
                    "clip_l14_similarity_score": float(np.clip(l14, -1.0, 1.0)),
                    "face_bboxes": [],
                    "key": key,
                    "shard": shard,
                    "width": w,
                    "height": h,
                    "caption_kind": kind,
                    "image_kind": str(image_kinds[i]),
                    "language": language,
                    "duplicate_of": uids[source] if source is not None else "",
                    "scene": json.dumps(scene.attributes(), sort_keys=True),
                }
            )
    for shard, shard_rows in parquet_rows.items():
        _write_shard_parquet(out_dir / shard, shard_rows)
    frame = pd.DataFrame(rows)
    metadata = pa.Table.from_pandas(frame[METADATA_SCHEMA.names], schema=METADATA_SCHEMA, preserve_index=False)
    pq.write_table(metadata, out_dir / METADATA_FILE)
    return frame


# ---------------------------------------------------------------- teacher corpus


def generate_teacher_corpus(
    out_dir: Path,
    cfg: EmbeddedCorpusConfig,
    show_progress: bool = False,
    *,
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """Write the clean corpus ``out_dir/shards/{i:05d}.tar`` (KEY.jpg, KEY.txt, KEY.json attributes).

    Returns one row per sample: ``key``, ``caption``, ``width``, ``height``, ``shard`` (relative
    to ``out_dir``).
    """
    out_dir = Path(out_dir)
    progress_fn = _progress_fn(show_progress, progress)
    rng = stream_rng(cfg.seed, TEACHER_STREAM)
    side = cfg.image_size
    rows: list[dict[str, Any]] = []
    with ShardWriter(out_dir / "shards", out_dir, max_count=cfg.shard_size) as writer:
        for i in progress_fn(range(cfg.teacher_corpus_size), "teacher corpus", cfg.teacher_corpus_size):
            scene = scenes.sample_scene(rng, side, side)
            caption = scenes.full_caption(scene, rng)
            attrs = {**scene.attributes(), "caption": caption, "width": side, "height": side}
            key = f"{i:08d}"
            jpg = encode_jpeg(scenes.render_scene(scene, side, side))
            shard = writer.write(key, {"jpg": jpg, "txt": caption.encode("utf-8"), "json": _json_bytes(attrs)})
            rows.append(
                {
                    "key": key,
                    "caption": caption,
                    "width": side,
                    "height": side,
                    "shard": shard,
                }
            )
    return pd.DataFrame(rows, columns=["key", "caption", "width", "height", "shard"])


# ---------------------------------------------------------------- benchmark


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def _classification_scene(task: ClassificationTask, label: int, rng: np.random.Generator, side: int) -> scenes.Scene:
    # One main group, no second object: the label is then unambiguous.
    if task.name == "shape":
        return scenes.sample_scene(rng, side, side, shape=task.classnames[label], count=1, allow_extra=False)
    if task.name == "color":
        return scenes.sample_scene(rng, side, side, color=task.classnames[label], count=1, allow_extra=False)
    if task.name == "count":
        return scenes.sample_scene(rng, side, side, count=label + 1, allow_extra=False)
    if task.name == "background":
        return scenes.sample_scene(rng, side, side, texture=task.classnames[label], allow_extra=False)
    raise ValueError(f"unknown classification task {task.name!r}")


def generate_benchmark(
    out_dir: Path,
    cfg: EmbeddedCorpusConfig,
    show_progress: bool = False,
    *,
    progress: ProgressFn | None = None,
) -> pd.DataFrame:
    """Write held-out tasks in clip_benchmark's webdataset layout under ``out_dir``.

    Per task ``<task>/test/0.tar`` and ``<task>/test/nshards.txt``, ``<task>/dataset_type.txt``;
    classification adds ``classnames.txt`` and ``zeroshot_classification_templates.txt``.
    ``out_dir/tasks.json`` lists ``{"name", "type", "num_samples"}``. Returns one row per sample:
    ``task``, ``key``, ``caption``, ``label`` (class name, "" for retrieval), ``width``,
    ``height``, ``shard`` (relative to ``out_dir``).
    """
    out_dir = Path(out_dir)
    progress_fn = _progress_fn(show_progress, progress)
    n = cfg.benchmark_size
    if n < 1:
        raise ValueError(f"embedded_corpus.benchmark_size must be >= 1, got {n}")
    side = cfg.image_size
    rows: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    all_tasks: list[ClassificationTask | str] = [*CLASSIFICATION_TASKS, RETRIEVAL_TASK]
    for index, task in enumerate(all_tasks):
        rng = stream_rng(cfg.seed, BENCHMARK_STREAM, index)
        name = task.name if isinstance(task, ClassificationTask) else task
        task_dir = out_dir / name
        # One shard per task (clip_benchmark reads test/{0..nshards-1}.tar).
        writer = ShardWriter(task_dir / "test", out_dir, name_format="{:d}.tar", max_count=n)
        if isinstance(task, ClassificationTask):
            labels = rng.permutation(np.arange(n) % len(task.classnames))  # balanced classes
        for i in progress_fn(range(n), f"benchmark {name}", n):
            key = f"s{i:07d}"
            if isinstance(task, ClassificationTask):
                label = int(labels[i])
                scene = _classification_scene(task, label, rng, side)
                caption = scenes.full_caption(scene, rng)
                members = {"jpg": encode_jpeg(scenes.render_scene(scene, side, side)), "cls": str(label).encode()}
                classname = task.classnames[label]
            else:
                scene = scenes.sample_scene(rng, side, side)
                captions = scenes.full_captions(scene, rng, RETRIEVAL_CAPTIONS)
                caption = captions[0]
                members = {
                    "jpg": encode_jpeg(scenes.render_scene(scene, side, side)),
                    "txt": "\n".join(captions).encode("utf-8"),
                }
                classname = ""
            shard = writer.write(key, members)
            rows.append(
                {
                    "task": name,
                    "key": key,
                    "caption": caption,
                    "label": classname,
                    "width": side,
                    "height": side,
                    "shard": shard,
                }
            )
        shards = writer.close()
        _write_lines(task_dir / "test" / "nshards.txt", [str(len(shards))])
        if isinstance(task, ClassificationTask):
            _write_lines(task_dir / "classnames.txt", task.classnames)
            _write_lines(task_dir / "zeroshot_classification_templates.txt", task.templates)
            _write_lines(task_dir / "dataset_type.txt", ["classification"])
            tasks.append({"name": name, "type": "classification", "num_samples": n})
        else:
            _write_lines(task_dir / "dataset_type.txt", ["retrieval"])
            tasks.append({"name": name, "type": "retrieval", "num_samples": n})
    (out_dir / TASKS_FILE).write_text(json.dumps(tasks, indent=2) + "\n", encoding="utf-8")
    return pd.DataFrame(rows, columns=["task", "key", "caption", "label", "width", "height", "shard"])


# ---------------------------------------------------------------- previews and the stage


def _first_samples(shard: Path, limit: int) -> list[tuple[str, dict[str, bytes]]]:
    return list(islice(iter_tar_samples(shard), limit))


def _decode(jpg: bytes) -> Image.Image:
    with Image.open(io.BytesIO(jpg)) as image:
        return image.convert("RGB")


def write_previews(out_dir: Path, pool: pd.DataFrame, count: int = 16) -> dict[str, str]:
    """Grids of the first pool, teacher and benchmark samples, read back from the written shards."""
    previews_dir = out_dir / "previews"
    previews: dict[str, str] = {}

    kinds = dict(zip(pool["key"], pool["caption_kind"], strict=True))
    samples = _first_samples(out_dir / POOL_DIR / pool["shard"].iloc[0], count)
    images = [_decode(s["jpg"]) for _, s in samples]
    captions = [
        [s["txt"].decode("utf-8"), f"{kinds[key]}, {im.width}x{im.height}"]
        for (key, s), im in zip(samples, images, strict=True)
    ]
    image_grid(images, captions, previews_dir / "pool_grid.png")
    previews["pool_grid"] = "previews/pool_grid.png"

    teacher_shard = sorted((out_dir / TEACHER_DIR / "shards").glob("*.tar"))
    if teacher_shard:
        samples = _first_samples(teacher_shard[0], count)
        image_grid(
            [_decode(s["jpg"]) for _, s in samples],
            [s["txt"].decode("utf-8") for _, s in samples],
            previews_dir / "teacher_grid.png",
        )
        previews["teacher_grid"] = "previews/teacher_grid.png"

    images, captions = [], []
    for task in CLASSIFICATION_TASKS:
        names = (out_dir / BENCHMARK_DIR / task.name / "classnames.txt").read_text(encoding="utf-8").splitlines()
        for _, s in _first_samples(out_dir / BENCHMARK_DIR / task.name / "test" / "0.tar", 2):
            images.append(_decode(s["jpg"]))
            captions.append(f"{task.name}: {names[int(s['cls'].decode())]}")
    for _, s in _first_samples(out_dir / BENCHMARK_DIR / RETRIEVAL_TASK / "test" / "0.tar", 4):
        images.append(_decode(s["jpg"]))
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
    teacher = generate_teacher_corpus(out / TEACHER_DIR, cfg, progress=ctx.progress)
    seconds["teacher"] = time.perf_counter() - started

    started = time.perf_counter()
    bench = generate_benchmark(out / BENCHMARK_DIR, cfg, progress=ctx.progress)
    seconds["benchmark"] = time.perf_counter() - started

    started = time.perf_counter()
    previews = write_previews(out, pool)
    seconds["previews"] = time.perf_counter() - started

    columns = ["split", "key", "caption", "width", "height", "caption_kind", "label", "shard"]
    manifest = pd.concat(
        [
            pool.assign(split="pool", caption=pool["text"], label="", shard=POOL_DIR + "/" + pool["shard"])[columns],
            teacher.assign(split="teacher", caption_kind="full", label="", shard=TEACHER_DIR + "/" + teacher["shard"])[
                columns
            ],
            bench.assign(
                split="benchmark/" + bench["task"],
                caption_kind="full",
                shard=BENCHMARK_DIR + "/" + bench["shard"],
            )[columns],
        ],
        ignore_index=True,
    )

    caption_kinds = Counter(pool["caption_kind"])
    summary: dict[str, Any] = {
        "samples": {split: int(c) for split, c in manifest["split"].value_counts(sort=False).items()},
        "pool": {
            "samples": len(pool),
            "shards": int(pool["shard"].nunique()),
            "caption_kinds": {k: int(caption_kinds.get(k, 0)) for k in scenes.CAPTION_KINDS},
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
        "pool_duplicates": float(summary["pool"]["duplicates"]),
        **{f"pool_fraction_{k}": caption_kinds.get(k, 0) / max(1, len(pool)) for k in scenes.CAPTION_KINDS},
        "generation_seconds": float(sum(seconds.values())),
    }
    return StageOutcome(manifest=manifest, summary=summary, metrics=metrics, previews=previews)
