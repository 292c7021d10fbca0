"""Preview images a person looks at in the Dagster UI and MLflow: thumbnail grids with captions."""

from __future__ import annotations

import functools
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PAD = 6  # pixels around each thumbnail and its text
FONT_SIZE = 11
LINE_HEIGHT = 13
MAX_LINES_PER_CELL = 10  # a cell's text stops here (last line ends with "…")
_BACKGROUND = (250, 250, 250)
_THUMB_BACKGROUND = (225, 225, 225)
# First caption black, further captions (e.g. synthetic ones) in alternating blues.
_TEXT_COLORS = ((20, 20, 20), (25, 70, 170), (120, 40, 140))


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # DejaVu (on most Linux machines) draws é, ß, ñ, œ; Pillow's bundled font lacks some of
    # them, so it is only the fallback.
    for name in ("DejaVuSansCondensed.ttf", "DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, FONT_SIZE)
        except OSError:
            continue
    return ImageFont.load_default(size=FONT_SIZE)


def _wrap(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; words longer than a line are cut by characters."""
    if text == "":
        return ['""']  # an empty caption is data worth seeing, not a blank
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while font.getlength(word) > width:
            cut = max(1, next(i for i in range(len(word), 0, -1) if font.getlength(word[:i]) <= width))
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines or ['""']


def _fit(image: Image.Image, thumb: int) -> Image.Image:
    """``image`` scaled (aspect kept) and centred on a ``thumb`` x ``thumb`` tile."""
    image = image.convert("RGB")
    scale = thumb / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resized = image.resize(size, Image.Resampling.BICUBIC)
    tile = Image.new("RGB", (thumb, thumb), _THUMB_BACKGROUND)
    tile.paste(resized, ((thumb - size[0]) // 2, (thumb - size[1]) // 2))
    return tile


def grid_size(num_images: int, cols: int, thumb: int, text_lines: int) -> tuple[int, int]:
    """(width, height) of the grid :func:`image_grid` draws for ``text_lines`` lines per cell."""
    cols = max(1, min(cols, num_images))
    rows = math.ceil(num_images / cols)
    return cols * (thumb + 2 * PAD), rows * (thumb + 2 * PAD + text_lines * LINE_HEIGHT)


def image_grid(
    images: list[Image.Image],
    captions: list[list[str]] | list[str],
    path: Path,
    cols: int = 4,
    thumb: int = 128,
) -> Path:
    """Write a PNG grid of thumbnails, each with its caption(s) wrapped underneath; returns ``path``.

    ``captions[i]`` is one string or a list of strings (e.g. the web caption and synthetic
    ones), drawn one after the other in alternating colours. All cells share the height of the
    cell with the most text (at most ``MAX_LINES_PER_CELL`` lines).
    """
    if not images:
        raise ValueError("image_grid needs at least one image")
    if len(captions) != len(images):
        raise ValueError(f"image_grid got {len(images)} images but {len(captions)} caption entries")
    if cols < 1 or thumb < 16:
        raise ValueError(f"image_grid needs cols >= 1 and thumb >= 16, got cols={cols}, thumb={thumb}")
    font = _font()
    text_width = thumb
    # Per cell: [(line, colour index)], the caption index picks the colour.
    cells: list[list[tuple[str, int]]] = []
    for entry in captions:
        texts = [entry] if isinstance(entry, str) else list(entry)
        lines = [(line, k) for k, text in enumerate(texts) for line in _wrap(str(text), font, text_width)]
        if len(lines) > MAX_LINES_PER_CELL:
            last, k = lines[MAX_LINES_PER_CELL - 1]
            lines = [*lines[: MAX_LINES_PER_CELL - 1], (last.rstrip() + "…", k)]
        cells.append(lines)
    text_lines = max(len(c) for c in cells)
    width, height = grid_size(len(images), cols, thumb, text_lines)
    cols = max(1, min(cols, len(images)))
    cell_h = thumb + 2 * PAD + text_lines * LINE_HEIGHT

    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, (image, lines) in enumerate(zip(images, cells, strict=True)):
        x0 = (i % cols) * (thumb + 2 * PAD) + PAD
        y0 = (i // cols) * cell_h + PAD
        canvas.paste(_fit(image, thumb), (x0, y0))
        for j, (line, k) in enumerate(lines):
            draw.text((x0, y0 + thumb + 2 + j * LINE_HEIGHT), line, fill=_TEXT_COLORS[k % len(_TEXT_COLORS)], font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path
