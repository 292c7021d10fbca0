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
        caption, *partial = sample["txt"].decode("utf-8").split("\n")
        assert attrs["caption"] == caption
        assert attrs["main"]["shape"] in scenes.SHAPES and attrs["texture"] in scenes.TEXTURES
        assert attrs["main"]["color"] in caption.split()
        # Then the partial captions: each names less than the full one, none is empty.
        assert len(partial) == CFG.teacher_partial_captions and all(0 < len(p) < len(caption) for p in partial)
        with Image.open(io.BytesIO(sample["jpg"])) as image:
            assert image.size == (CFG.image_size, CFG.image_size)


def test_hard_negatives_are_written_line_for_line_when_asked(tmp_path: Path) -> None:
    plain = ec.generate_teacher_corpus(tmp_path / "plain", CFG, relative_to=tmp_path)
    cfg = CFG.model_copy(update={"teacher_hard_negatives": True})
    with_negatives = ec.generate_teacher_corpus(tmp_path / "neg", cfg, relative_to=tmp_path)
    # The flag adds files; the corpus itself is the same.
    assert plain["caption"].tolist() == with_negatives["caption"].tolist()
    assert all("neg.txt" not in sample for _, sample in iter_tar_samples(tmp_path / "plain" / "00000.tar"))
    for _, sample in iter_tar_samples(tmp_path / "neg" / "00000.tar"):
        lines, negatives = sample["txt"].decode().split("\n"), sample["neg.txt"].decode().split("\n")
        assert len(lines) == len(negatives) and all(n != p for n, p in zip(negatives, lines, strict=True))
