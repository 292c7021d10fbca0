"""Reading zero-shot eval sets in clip_benchmark's webdataset layout.

A task folder (LAION-AI/CLIP_benchmark ``build_wds_dataset``)::

    <task>/test/0.tar ... (or test/nshards.txt naming {0..n-1}.tar)
    <task>/classnames.txt                          classification: one class name per line
    <task>/zeroshot_classification_templates.txt   classification: one template per line, "{c}"
    <task>/dataset_type.txt                        optional: "retrieval" (else classification)

Samples are ``KEY.<image>`` (webp, png, jpg or jpeg, first found in that order) plus
``KEY.cls`` (class index as text) for classification or ``KEY.txt`` (captions, one per line)
for retrieval. A benchmark root is either a folder of tasks, listed by ``tasks.json``
(``[{"name", "type"}]`` or ``{"tasks": [...]}``) or found by scanning, or one task folder.

Bad samples (no image, undecodable image, missing or out-of-range label, no caption) are
skipped and counted per reason; bad task metadata is an error.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from training.data.tar_shards import DamagedTarError, iter_tar_samples

TaskType = Literal["classification", "retrieval"]
TASKS_FILE = "tasks.json"
CLASSNAMES_FILE = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
DATASET_TYPE_FILE = "dataset_type.txt"
NSHARDS_FILE = "nshards.txt"
# clip_benchmark's preference order when a sample carries several image members.
IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
PLACEHOLDER = "{c}"


@dataclass(frozen=True)
class TaskSpec:
    """Where a task lives and what kind it is; cheap to list, nothing decoded yet."""

    name: str
    type: TaskType
    folder: Path
    split: str = "test"


@dataclass
class Task:
    """One decoded eval set. Classification fills ``labels``; retrieval fills ``captions``."""

    name: str
    type: TaskType
    folder: Path
    keys: list[str]
    images: list[Image.Image]  # RGB, decoded
    labels: list[int] | None = None  # classification: index into classnames
    captions: list[list[str]] | None = None  # retrieval: one or more captions per image
    classnames: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    # reason -> number of samples skipped for it
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _dataset_type(folder: Path) -> TaskType:
    path = folder / DATASET_TYPE_FILE
    if not path.is_file():
        return "classification"  # clip_benchmark's default when the file is absent
    kind = path.read_text(encoding="utf-8").strip().lower()
    if kind in ("classification", "retrieval"):
        return kind  # type: ignore[return-value]
    raise ValueError(f"{path}: unsupported dataset type {kind!r} (classification or retrieval)")


def _numeric_stem(path: Path) -> tuple[int, str]:
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 62, path.stem)


def shard_paths(spec: TaskSpec) -> list[Path]:
    """The task's tar shards, in order: nshards.txt when present, else every *.tar."""
    split_dir = spec.folder / spec.split
    nshards_file = split_dir / NSHARDS_FILE
    if nshards_file.is_file():
        count = int(nshards_file.read_text(encoding="utf-8").strip())
        shards = [split_dir / f"{i}.tar" for i in range(count)]
        missing = [p.name for p in shards if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{split_dir}: {NSHARDS_FILE} says {count} shards, missing {missing}")
        return shards
    shards = sorted(split_dir.glob("*.tar"), key=_numeric_stem)
    if not shards:
        raise FileNotFoundError(f"task {spec.name!r}: no .tar shards in {split_dir}")
    return shards


def _is_task_folder(folder: Path, split: str = "test") -> bool:
    return (folder / split).is_dir() and any((folder / split).glob("*.tar"))


def list_tasks(root: Path, split: str = "test") -> list[TaskSpec]:
    """The tasks under a benchmark root (tasks.json, else scanned), or the root as one task."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"benchmark root not found: {root}")
    index = root / TASKS_FILE
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        entries = data.get("tasks") if isinstance(data, dict) else data
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{index}: expected a non-empty list of {{name, type}} entries")
        specs = []
        for entry in entries:
            name, kind = entry.get("name"), entry.get("type")
            if not name or kind not in ("classification", "retrieval"):
                raise ValueError(f"{index}: bad entry {entry!r} (needs name and type classification|retrieval)")
            if not (root / name).is_dir():
                raise FileNotFoundError(f"{index} lists task {name!r} but {root / name} does not exist")
            specs.append(TaskSpec(name=name, type=kind, folder=root / name, split=split))
        return specs
    if _is_task_folder(root, split):
        return [TaskSpec(name=root.name, type=_dataset_type(root), folder=root, split=split)]
    specs = [
        TaskSpec(name=sub.name, type=_dataset_type(sub), folder=sub, split=split)
        for sub in sorted(root.iterdir())
        if sub.is_dir() and _is_task_folder(sub, split)
    ]
    if not specs:
        raise FileNotFoundError(f"{root}: no {TASKS_FILE} and no task folders with {split}/*.tar")
    return specs


def _decode_image(members: dict[str, bytes]) -> Image.Image | str:
    """The sample's image as RGB, or the skip reason."""
    ext = next((e for e in IMAGE_EXTS if e in members), None)
    if ext is None:
        return "no_image"
    try:
        with Image.open(io.BytesIO(members[ext])) as image:
            return image.convert("RGB")  # convert() forces a full decode, so corrupt data fails here
    except Exception:  # PIL raises many types on bad bytes
        return "undecodable_image"


def _parse_label(members: dict[str, bytes], num_classes: int) -> int | str:
    if "cls" not in members:
        return "no_label"
    try:
        label = int(members["cls"].decode("utf-8").strip())
    except (UnicodeDecodeError, ValueError):
        return "bad_label"
    return label if 0 <= label < num_classes else "label_out_of_range"


def _parse_captions(members: dict[str, bytes]) -> list[str] | str:
    if "txt" not in members:
        return "no_captions"
    try:
        text = members["txt"].decode("utf-8")
    except UnicodeDecodeError:
        return "bad_captions"
    captions = [line.strip() for line in text.splitlines() if line.strip()]
    return captions if captions else "no_captions"


def _class_metadata(folder: Path) -> tuple[list[str], list[str]]:
    for name in (CLASSNAMES_FILE, TEMPLATES_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"classification task {folder.name!r} lacks {folder / name}")
    classnames = _read_lines(folder / CLASSNAMES_FILE)
    templates = _read_lines(folder / TEMPLATES_FILE)
    if not classnames or not templates:
        raise ValueError(f"task {folder.name!r}: empty {CLASSNAMES_FILE} or {TEMPLATES_FILE}")
    bad = [t for t in templates if PLACEHOLDER not in t]
    if bad:
        raise ValueError(f"task {folder.name!r}: templates without {PLACEHOLDER}: {bad}")
    return classnames, templates


def load_task(spec: TaskSpec) -> Task:
    """Decode every sample of a task; bad samples are skipped and counted by reason."""
    classnames, templates = _class_metadata(spec.folder) if spec.type == "classification" else ([], [])
    keys: list[str] = []
    images: list[Image.Image] = []
    labels: list[int] = []
    captions: list[list[str]] = []
    skipped: Counter[str] = Counter()
    for shard in shard_paths(spec):
        try:
            samples = list(iter_tar_samples(shard))
        except DamagedTarError as err:
            raise ValueError(f"task {spec.name!r}: unreadable shard {shard}: {err}") from err
        for key, members in samples:
            if spec.type == "classification":
                target: int | list[str] | str = _parse_label(members, len(classnames))
            else:
                target = _parse_captions(members)
            if isinstance(target, str):
                skipped[target] += 1
                continue
            image = _decode_image(members)
            if isinstance(image, str):
                skipped[image] += 1
                continue
            keys.append(key)
            images.append(image)
            if isinstance(target, int):
                labels.append(target)
            else:
                captions.append(target)
    if not keys:
        raise ValueError(f"task {spec.name!r} has no usable samples (skipped: {dict(skipped) or 'none found'})")
    return Task(
        name=spec.name,
        type=spec.type,
        folder=spec.folder,
        keys=keys,
        images=images,
        labels=labels if spec.type == "classification" else None,
        captions=captions if spec.type == "retrieval" else None,
        classnames=classnames,
        templates=templates,
        skipped=dict(skipped),
    )


def load_benchmark(root: Path, split: str = "test") -> list[Task]:
    """Every task under ``root``, decoded (see :func:`list_tasks` for the layout)."""
    return [load_task(spec) for spec in list_tasks(root, split)]
