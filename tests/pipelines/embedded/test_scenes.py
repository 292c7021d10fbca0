"""Scene sampling and drawing: inside the canvas, no overlap, deterministic pixels."""

from __future__ import annotations

import numpy as np

from pipelines.embedded import render, scenes


def test_scene_layout_inside_canvas_without_overlap() -> None:
    rng = np.random.default_rng(0)
    for width, height in [(48, 48), (30, 26), (200, 45), (40, 190)]:
        for _ in range(60):
            scene = scenes.sample_scene(rng, width, height)
            short = min(width, height)
            pts = [(p.cx * width, p.cy * height, p.radius * short) for p in scene.placements]
            assert len(pts) == scene.main.count + (1 if scene.extra else 0)
            for x, y, r in pts:
                assert r <= x <= width - r and r <= y <= height - r
            for i, (x, y, r) in enumerate(pts):
                for x2, y2, r2 in pts[i + 1 :]:
                    assert np.hypot(x - x2, y - y2) >= r + r2
            assert scene.background not in {scene.main.color, scene.extra.color if scene.extra else None}
            image = render.render_scene(scene, width, height)
            assert image.size == (width, height)
            assert image.tobytes() == render.render_scene(scene, width, height).tobytes()


def test_hard_negative_keeps_the_words_and_changes_one_attribute() -> None:
    from pipelines.embedded import captions

    rng = np.random.default_rng(4)
    for _ in range(40):
        scene = scenes.sample_scene(rng, 64, 64)
        for caption in (captions.full_caption, captions.partial_caption):
            positive, negative = captions.with_hard_negative(scene, caption, rng)
            assert negative != positive
            if caption is captions.full_caption:
                # Full captions name both colours: the negative swaps them, word for word (but
                # for an article: "an orange" against "a blue").
                assert len(negative.split()) == len(positive.split())
                assert set(negative.split()) - {"a", "an"} == set(positive.split()) - {"a", "an"}
