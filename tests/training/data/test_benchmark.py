"""Reading eval sets in clip_benchmark's webdataset layout: classification and retrieval, skips, bad metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.training.benchmark_helpers import (
    _encode,
    solid,
    write_clip_benchmark_classification,
    write_clip_benchmark_retrieval,
    write_samples,
)
from training.data.benchmark import list_tasks, load_benchmark, load_task, shard_paths


def test_reader_classification_layout_with_skips(tmp_path: Path) -> None:
    folder = tmp_path / "wds_colours"
    write_clip_benchmark_classification(folder)
    (spec,) = list_tasks(folder)  # a task folder given directly
    assert (spec.name, spec.type) == ("wds_colours", "classification")
    task = load_task(spec)
    assert task.keys == ["s0000000", "s0000001", "s0000002", "s0000006"]
    assert task.labels == [0, 1, 2, 1]
    assert task.classnames == ["red", "green", "blue"]
    assert task.templates == ["a photo of a {c}.", "a {c} thing."]
    assert task.skipped == {"label_out_of_range": 1, "undecodable_image": 1, "no_label": 1}
    assert all(im.mode == "RGB" for im in task.images)
    assert task.images[2].getpixel((0, 0)) == (0, 0, 255)


def test_reader_retrieval_and_tasks_json(tmp_path: Path) -> None:
    root = tmp_path / "bench"
    write_clip_benchmark_classification(root / "colours")
    write_clip_benchmark_retrieval(root / "captions")
    (root / "tasks.json").write_text(
        json.dumps([{"name": "colours", "type": "classification"}, {"name": "captions", "type": "retrieval"}])
    )
    tasks = load_benchmark(root)
    assert [t.name for t in tasks] == ["colours", "captions"]
    ret = tasks[1]
    assert ret.captions == [["a red square", "red!"], ["grün", "green"]]
    assert ret.labels is None and ret.skipped == {"no_captions": 2}
    # without tasks.json the folders are scanned (sorted) and typed by dataset_type.txt
    (root / "tasks.json").unlink()
    assert [(s.name, s.type) for s in list_tasks(root)] == [("captions", "retrieval"), ("colours", "classification")]


def test_reader_rejects_bad_metadata(tmp_path: Path) -> None:
    folder = tmp_path / "t"
    write_clip_benchmark_classification(folder)
    (folder / "zeroshot_classification_templates.txt").write_text("a photo of a thing.\n")
    with pytest.raises(ValueError, match="without"):
        load_task(list_tasks(folder)[0])
    (folder / "classnames.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classnames"):
        load_task(list_tasks(folder)[0])
    (folder / "test" / "1.tar").unlink()
    with pytest.raises(FileNotFoundError, match="nshards"):
        shard_paths(list_tasks(folder)[0])
    with pytest.raises(FileNotFoundError):
        list_tasks(tmp_path / "missing")


def test_reader_task_without_usable_samples_is_an_error(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    (folder / "test").mkdir(parents=True)
    (folder / "dataset_type.txt").write_text("retrieval")
    write_samples(folder / "test" / "0.tar", [("x", {"jpg": _encode(solid("red"), "JPEG")})])
    with pytest.raises(ValueError, match="no usable samples"):
        load_task(list_tasks(folder)[0])
