"""A toy teacher corpus on disk (coloured shapes with captions) and a bootstrapping stage's
context, for the tests of the teacher and captioner stages, their trainers and the corpus reader.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

from clipforge.config import Params
from clipforge.stage_api import NullTracker, StageContext
from training.data.embedded_layout import TEACHER_SHARDS_DIR

COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (240, 220, 30)}

SHAPES = ("square", "circle")


def _scene(color: str, shape: str, side: int = 32) -> Image.Image:
    image = Image.new("RGB", (side, side), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    box = (side // 4, side // 4, 3 * side // 4, 3 * side // 4)
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLORS[color])
    return image


def _jpg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_corpus(root: Path, n: int = 40, bad: bool = False, negatives: bool = False) -> Path:
    """An embedded_corpus-like folder: teacher_corpus/shards/*.tar with KEY.jpg/.txt/.json;
    with ``negatives``, two caption lines per image and KEY.neg.txt (colour, then shape changed)."""
    shards = root / TEACHER_SHARDS_DIR
    shards.mkdir(parents=True)
    combos = [(c, s) for c in COLORS for s in SHAPES]
    with tarfile.open(shards / "00000.tar", "w") as tar:
        for i in range(n):
            color, shape = combos[i % len(combos)]
            key = f"{i:06d}"
            _add(tar, f"{key}.jpg", _jpg(_scene(color, shape)))
            lines = [f"a {color} {shape} on a grey background", f"a {color} thing"]
            _add(tar, f"{key}.txt", "\n".join(lines if negatives else lines[:1]).encode())
            if negatives:
                names = list(COLORS)
                other = names[(names.index(color) + 1) % len(names)]
                _add(tar, f"{key}.neg.txt", f"a {other} {shape} on a grey background\na {other} thing".encode())
            _add(
                tar,
                f"{key}.json",
                json.dumps(
                    {
                        "main": {"color": color, "shape": shape, "count": 1, "size": "large", "position": "center"},
                        "texture": "plain",
                        "background": "grey",
                    }
                ).encode(),
            )
        if bad:
            _add(tar, "bad001.jpg", b"not a jpeg")
            _add(tar, "bad001.txt", b"a broken image")
            _add(tar, "bad002.jpg", _jpg(_scene("red", "square")))  # no caption
            _add(tar, "bad003.jpg", _jpg(_scene("red", "square")))
            _add(tar, "bad003.txt", b"   ")
    return root


def bootstrap_ctx(tmp_path: Path, params: Params, corpus: Path, name: str) -> StageContext:
    out = tmp_path / name
    out.mkdir()
    return StageContext(
        name=name,
        params=params,
        inputs={"embedded_corpus": corpus},
        out_dir=out,
        tracker=NullTracker(),
        show_progress=False,
    )
