"""Thumbnail grids with captions (pipelines/previews.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pipelines import previews
from pipelines.previews import LINE_HEIGHT, MAX_LINES_PER_CELL, PAD, grid_size, image_grid


def _solid(color: tuple[int, int, int], size: tuple[int, int] = (40, 40)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_grid_size_and_thumbnails(tmp_path: Path) -> None:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 250, 0), (0, 0, 0)]
    images = [_solid(c) for c in colors]
    path = image_grid(images, ["a"] * 5, tmp_path / "sub" / "grid.png", cols=3, thumb=64)
    assert path == tmp_path / "sub" / "grid.png"
    with Image.open(path) as grid:
        grid.verify()
    with Image.open(path) as grid:
        assert grid.format == "PNG"
        # 3 columns, 2 rows, one text line per cell.
        assert grid.size == (3 * (64 + 2 * PAD), 2 * (64 + 2 * PAD + LINE_HEIGHT)) == grid_size(5, 3, 64, 1)
        rgb = grid.convert("RGB")
        cell_h = 64 + 2 * PAD + LINE_HEIGHT
        for i, color in enumerate(colors):
            x = (i % 3) * (64 + 2 * PAD) + PAD + 32
            y = (i // 3) * cell_h + PAD + 32
            assert rgb.getpixel((x, y)) == color


def test_several_captions_and_wrapping(tmp_path: Path) -> None:
    long = "two large red circles and a small blue triangle on a striped green background " * 2
    captions = [["short", "zwei große Kreise auf grünem Hintergrund"], [long], [""]]
    path = image_grid([_solid((9, 9, 9))] * 3, captions, tmp_path / "g.png", cols=4, thumb=96)
    with Image.open(path) as grid:
        width, height = grid.size
        assert width == 3 * (96 + 2 * PAD)  # fewer images than columns: one row of 3
        lines = (height - (96 + 2 * PAD)) // LINE_HEIGHT
        assert 3 <= lines <= MAX_LINES_PER_CELL
        # Text is drawn: the text band under the first thumbnail is not blank.
        band = grid.convert("L").crop((PAD, PAD + 96 + 2, PAD + 96, height))
        assert band.getextrema()[0] < 128


def test_wrap_cuts_long_words_and_marks_empty() -> None:
    font = previews._font()
    lines = previews._wrap("x" * 200, font, 60)
    assert len(lines) > 1 and all(font.getlength(line) <= 60 for line in lines)
    assert "".join(lines) == "x" * 200
    assert previews._wrap("", font, 60) == ['""']


def test_extreme_aspect_fits_thumbnail(tmp_path: Path) -> None:
    path = image_grid([_solid((200, 0, 0), (400, 80))], ["wide"], tmp_path / "w.png", thumb=64)
    with Image.open(path) as grid:
        assert grid.width == 64 + 2 * PAD
        # 400x80 scaled to 64x13, centred: the tile's top rows stay background grey.
        assert grid.convert("RGB").getpixel((PAD + 32, PAD + 2)) != (200, 0, 0)
        assert grid.convert("RGB").getpixel((PAD + 32, PAD + 32))[0] > 150


def test_bad_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 images but 1 caption"):
        image_grid([_solid((0, 0, 0))] * 2, ["one"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="at least one image"):
        image_grid([], [], tmp_path / "x.png")
