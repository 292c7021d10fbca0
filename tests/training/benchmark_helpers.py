"""Eval sets in clip_benchmark's webdataset layout, written for the reader, zero-shot and
evaluation tests: solid-colour images, classification and retrieval folders."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from training.data.tar_shards import write_tar

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def solid(colour: str, size: tuple[int, int] = (12, 8)) -> Image.Image:
    return Image.new("RGB", size, COLOURS[colour])


def _encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def write_samples(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """A tar of (key, {ext: bytes}) samples, through the project's own deterministic writer."""
    write_tar(path, ((f"{key}.{ext}", data) for key, members in samples for ext, data in members.items()))


def write_clip_benchmark_classification(folder: Path) -> None:
    """LAION clip_benchmark layout: test/nshards.txt, {0..n-1}.tar, webp images, .cls labels."""
    (folder / "test").mkdir(parents=True)
    (folder / "test" / "nshards.txt").write_text("2\n")
    (folder / "classnames.txt").write_text("red\ngreen\nblue\n")
    (folder / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na {c} thing.\n")
    (folder / "dataset_type.txt").write_text("classification\n")
    write_samples(
        folder / "test" / "0.tar",
        [
            ("s0000000", {"webp": _encode(solid("red"), "WEBP"), "cls": b"0"}),
            ("s0000001", {"webp": _encode(solid("green"), "WEBP"), "cls": b"1\n"}),
            ("s0000002", {"png": _encode(solid("blue"), "PNG"), "cls": b"2"}),
            ("s0000003", {"webp": _encode(solid("blue"), "WEBP"), "cls": b"7"}),  # out of range
        ],
    )
    write_samples(
        folder / "test" / "1.tar",
        [
            ("s0000004", {"jpg": b"not an image", "cls": b"0"}),  # undecodable
            ("s0000005", {"jpg": _encode(solid("blue"), "JPEG")}),  # no label
            ("s0000006", {"jpeg": _encode(solid("green"), "JPEG"), "cls": b"1"}),
        ],
    )


def write_clip_benchmark_retrieval(folder: Path) -> None:
    (folder / "dataset_type.txt").parent.mkdir(parents=True)
    (folder / "dataset_type.txt").write_text("retrieval\n")
    write_samples(
        folder / "test" / "0.tar",
        [
            ("a", {"jpg": _encode(solid("red"), "JPEG"), "txt": b"a red square\n\nred!\n"}),
            ("b", {"webp": _encode(solid("green"), "WEBP"), "txt": "grün\ngreen".encode()}),
            ("c", {"jpg": _encode(solid("blue"), "JPEG")}),  # no captions
            ("d", {"jpg": _encode(solid("blue"), "JPEG"), "txt": b"  \n"}),  # empty captions
        ],
    )
