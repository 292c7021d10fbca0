"""The word-list English detector the basic filter uses."""

from __future__ import annotations

import pytest

from pipelines.pool.english import is_english, language_evidence


@pytest.mark.parametrize(
    "text",
    [
        "two large red circles on a striped green background",
        "a picture of one small blue star in the top left corner",
        "Orange triangles",  # no function word at all: plain Latin text gets the benefit of the doubt
        "vintage leather handbag, brown",
        "there are three hearts on a dotted white background",
        "café with a view of the sea",  # one accented word does not outweigh English words
    ],
)
def test_english_captions_are_english(text: str) -> None:
    assert is_english(text)


@pytest.mark.parametrize(
    "text",
    [
        "zwei rote Kreise auf blauem Hintergrund",
        "ein kleiner gelber Stern",
        "un grand triangle orange",  # shared words ("triangle", "orange") count for neither side
        "trois petits cercles bleus sur fond blanc à rayures",
        "dos estrellas azules sobre fondo verde",
        "una cruz roja",
        "la casa blanca con un perro",
        "il gatto nero sul tavolo",
        "Привет, как дела",
        "東京タワーの写真",
        "2020",
        "",
    ],
)
def test_foreign_or_letterless_captions_are_not_english(text: str) -> None:
    assert not is_english(text)


def test_language_evidence_counts_each_side() -> None:
    ev = language_evidence("Two red circles und ein Stern")
    assert (ev.words, ev.english_hits, ev.foreign_hits) == (6, 3, 3)
    assert is_english("Two red circles und ein Stern")  # a tie goes to English
