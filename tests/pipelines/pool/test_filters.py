"""DataComp's basic filter rules and the CLIP-score selection, as functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines import filtered_pool as filtering
from pipelines.pool.filters import basic_rule
from tests.conftest import default_params, section, with_changes
from training.models.open_clip_models import load_teachers

CFG = section("filtered_pool", min_words=2, min_chars=5, min_image_side=48, max_aspect_ratio=3.0, require_english=True)


@pytest.mark.parametrize(
    ("text", "size", "rule"),
    [
        ("red circles", (64, 64), "caption_words"),  # 2 words: not more than min_words
        ("", (64, 64), "caption_words"),
        ("red blue circles", (64, 64), None),
        ("a b c", (64, 64), "caption_chars"),  # 3 words but 5 characters
        ("a b cd", (64, 64), None),
        ("zwei rote Kreise auf blauem Hintergrund", (64, 64), "english"),
        ("two red circles", (64, 47), "image_side"),
        ("two red circles", (48, 48), None),  # at least min_image_side passes
        ("two red circles", (145, 48), "aspect_ratio"),
        ("two red circles", (48, 144), None),  # exactly max_aspect_ratio passes
        ("zwei", (10, 100), "caption_words"),  # the first failed rule is the one reported
    ],
)
def test_basic_rule_reports_the_first_failed_rule(text: str, size: tuple[int, int], rule: str | None) -> None:
    assert basic_rule(text, size[0], size[1], CFG) == rule


def test_english_rule_can_be_switched_off() -> None:
    cfg = CFG.model_copy(update={"require_english": False})
    assert basic_rule("zwei rote Kreise auf blauem Hintergrund", 64, 64, cfg) is None


def test_threshold_mode_keeps_scores_at_or_above_it() -> None:
    cfg = with_changes(default_params().filtered_pool.clip_score, mode="threshold", threshold=0.25)
    keep = filtering.select_by_clip_score(np.array([0.1, 0.25, 0.3, 0.2499]), ["a", "b", "c", "d"], cfg)
    assert keep.tolist() == [False, True, True, False]


def test_top_fraction_keeps_the_best_and_breaks_ties_by_uid() -> None:
    cfg = with_changes(default_params().filtered_pool.clip_score, mode="top_fraction", top_fraction=0.5)
    scores = np.array([0.1, 0.5, 0.3, 0.3, 0.2])
    keep = filtering.select_by_clip_score(scores, ["e", "d", "c", "b", "a"], cfg)
    # ceil(0.5 * 5) = 3: 0.5, then the tie at 0.3 whole, in either order of reading.
    assert keep.tolist() == [False, True, True, True, False]
    cfg = with_changes(default_params().filtered_pool.clip_score, mode="top_fraction", top_fraction=0.4)
    keep = filtering.select_by_clip_score(scores, ["e", "d", "c", "b", "a"], cfg)
    assert keep.tolist() == [False, True, False, True, False]  # tie at 0.3: uid "b" before "c"


def test_none_mode_and_full_fraction_keep_everything() -> None:
    scores = np.array([-0.5, 0.0, 0.9])
    for cfg in (
        with_changes(default_params().filtered_pool.clip_score, mode="none"),
        with_changes(default_params().filtered_pool.clip_score, mode="top_fraction", top_fraction=1.0),
    ):
        assert filtering.select_by_clip_score(scores, ["a", "b", "c"], cfg).all()
    assert filtering.select_by_clip_score(np.zeros(0), [], default_params().filtered_pool.clip_score).shape == (0,)


def test_ensemble_score_is_the_mean_of_each_teachers_cosine(teacher_dir: Path) -> None:
    teachers = load_teachers(teacher_dir)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)) for i in range(3)]
    captions = ["a red circle", "two blue squares on a white background", ""]
    scores = filtering.ensemble_clip_scores(teachers, images, captions)
    per_teacher = []
    for t in teachers:  # the same cosine, computed here from open_clip's model directly
        with torch.no_grad():
            img = F.normalize(t.model.encode_image(t.normalize_pixels(t.pixels_from_pil(images))), dim=-1)
            txt = F.normalize(t.model.encode_text(t.tokenize(captions)), dim=-1)
        per_teacher.append((img * txt).sum(-1).numpy())
    np.testing.assert_allclose(scores, np.mean(per_teacher, axis=0), atol=1e-5)
    assert not np.allclose(per_teacher[0], per_teacher[1])  # two different teachers really averaged
    assert scores.shape == (3,) and np.all(np.abs(scores) <= 1)
