"""The clean teacher corpus: members and scene attributes."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from pipelines import embedded_corpus as ec
from pipelines.embedded import captions, scenes
from tests.pipelines.embedded.conftest import CFG
from training.data.tar_shards import iter_tar_samples


def _missing_attributes(text: str, attrs: dict) -> list[str]:
    """What of the main group's phrase ("three little blue squares") and the background's colour
    a caption leaves out. The phrase runs count, size, colour, shape (or "shapes"/"objects"), so
    colour and size are read just before the shape word: the background may share the colour."""
    main = attrs["main"]
    words = text.lower().replace(",", "").split()
    shape, count = main["shape"], int(main["count"])
    nouns = {shape, scenes.SHAPE_PLURALS[shape], "shape", "shapes", "object", "objects"}
    at = next((i for i, w in enumerate(words) if w in nouns), None)
    if at is None:
        return ["shape", "color", "size", "count"]
    before = words[max(0, at - 3) : at]
    return [
        name
        for name, named in (
            ("shape", words[at] in {shape, scenes.SHAPE_PLURALS[shape]}),
            ("color", before[-1:] == [main["color"]]),
            ("size", any(w in captions.SIZE_WORDS[main["size"]] for w in before)),
            ("count", count == 1 or scenes.COUNT_WORDS[count - 1] in before),
            ("background", f"{attrs['background']} background" in " ".join(words)),
        )
        if not named
    ]


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
        # Then the partial captions: each leaves out something the full one names, none is empty.
        assert len(partial) == CFG.teacher_partial_captions
        assert not _missing_attributes(caption, attrs)
        for text in partial:
            assert text and _missing_attributes(text, attrs), (caption, text)
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
