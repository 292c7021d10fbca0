"""The clean teacher corpus: members and scene attributes."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from pipelines import embedded_corpus as ec
from pipelines.embedded import scenes
from tests.pipelines.embedded.conftest import CFG
from training.data.tar_shards import iter_tar_samples


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
