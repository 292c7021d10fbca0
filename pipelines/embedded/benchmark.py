"""The held-out benchmark in clip_benchmark's webdataset layout: classification tasks and
retrieval.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clipforge.config import EmbeddedCorpusConfig
from clipforge.progress import Progress, no_progress
from pipelines.embedded import render, scenes
from pipelines.embedded.captions import full_caption, full_captions
from pipelines.embedded.members import encode_jpeg
from pipelines.embedded.streams import BENCHMARK_STREAM, stream_rng
from training.data.benchmark import CLASSNAMES_FILE, DATASET_TYPE_FILE, NSHARDS_FILE, TASKS_FILE, TEMPLATES_FILE
from training.data.tar_shards import ShardWriter

RETRIEVAL_CAPTIONS = 5


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
    progress: Progress = no_progress,
    stream: int = BENCHMARK_STREAM,
) -> pd.DataFrame:
    """Write held-out tasks in clip_benchmark's webdataset layout under ``out_dir``.

    Per task ``<task>/test/0.tar`` and ``<task>/test/nshards.txt``, ``<task>/dataset_type.txt``;
    classification adds ``classnames.txt`` and ``zeroshot_classification_templates.txt``.
    ``out_dir/tasks.json`` lists ``{"name", "type", "num_samples"}``. Returns one row per sample:
    ``task``, ``key``, ``caption``, ``label`` (class name, "" for retrieval), ``width``,
    ``height``, ``shard`` (relative to ``out_dir``). ``stream`` picks the random stream:
    BENCHMARK_STREAM for the held-out test split, VALIDATION_STREAM for the tuning split.
    """
    out_dir = Path(out_dir)
    n = cfg.benchmark_size
    if n < 1:
        raise ValueError(f"embedded_corpus.benchmark_size must be >= 1, got {n}")
    side = cfg.image_size
    rows: list[dict[str, Any]] = []
    tasks: list[dict[str, Any]] = []
    all_tasks: list[ClassificationTask | str] = [*CLASSIFICATION_TASKS, RETRIEVAL_TASK]
    for index, task in enumerate(all_tasks):
        rng = stream_rng(cfg.seed, stream, index)
        name = task.name if isinstance(task, ClassificationTask) else task
        task_dir = out_dir / name
        # One shard per task (clip_benchmark reads test/{0..nshards-1}.tar).
        writer = ShardWriter(task_dir / "test", out_dir, name_format="{:d}.tar", max_count=n)
        if isinstance(task, ClassificationTask):
            labels = rng.permutation(np.arange(n) % len(task.classnames))  # balanced classes
        for i in progress(range(n), f"benchmark {name}", n):
            key = f"s{i:07d}"
            if isinstance(task, ClassificationTask):
                label = int(labels[i])
                scene = _classification_scene(task, label, rng, side)
                caption = full_caption(scene, rng)
                members = {"jpg": encode_jpeg(render.render_scene(scene, side, side)), "cls": str(label).encode()}
                classname = task.classnames[label]
            else:
                scene = scenes.sample_scene(rng, side, side)
                captions = full_captions(scene, rng, RETRIEVAL_CAPTIONS)
                caption = captions[0]
                members = {
                    "jpg": encode_jpeg(render.render_scene(scene, side, side)),
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
        _write_lines(task_dir / "test" / NSHARDS_FILE, [str(len(shards))])
        if isinstance(task, ClassificationTask):
            _write_lines(task_dir / CLASSNAMES_FILE, task.classnames)
            _write_lines(task_dir / TEMPLATES_FILE, task.templates)
            _write_lines(task_dir / DATASET_TYPE_FILE, ["classification"])
            tasks.append({"name": name, "type": "classification", "num_samples": n})
        else:
            _write_lines(task_dir / DATASET_TYPE_FILE, ["retrieval"])
            tasks.append({"name": name, "type": "retrieval", "num_samples": n})
    (out_dir / TASKS_FILE).write_text(json.dumps(tasks, indent=2) + "\n", encoding="utf-8")
    return pd.DataFrame(rows, columns=["task", "key", "caption", "label", "width", "height", "shard"])
