"""Drawing a scene (PIL): a pure function of the scene, so the same seed always gives the same
pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from pipelines.embedded.scenes import SHAPES, Scene


def _unit_polygon(shape: str) -> np.ndarray:
    """Outline of ``shape`` around (0, 0) fitting the unit circle, y down; [P, 2] float."""
    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=float) * 0.78
    if shape == "triangle":
        a = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(a), np.sin(a) + 0.15], axis=1)
    if shape == "star":
        a = np.deg2rad(np.arange(10) * 36 - 90)
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([rad * np.cos(a), rad * np.sin(a) + 0.08], axis=1)
    if shape == "cross":
        w, L = 0.32, 0.9
        return np.array(
            [[-w, -L], [w, -L], [w, -w], [L, -w], [L, w], [w, w], [w, L], [-w, L], [-w, w], [-L, w], [-L, -w], [-w, -w]]
        )
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y + 2.5], axis=1)
        return pts / np.abs(pts).max()
    raise ValueError(f"no polygon for shape {shape!r}")


_POLYGONS = {s: _unit_polygon(s) for s in SHAPES if s != "circle"}


def _second_tone(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    # Texture contrast: light colours get a darker second tone, dark ones a lighter one.
    c = np.asarray(rgb, dtype=float)
    target = 0.0 if c.mean() > 150 else 255.0
    return tuple(int(v) for v in c + (target - c) * 0.42)  # type: ignore[return-value]


def _background(scene: Scene, width: int, height: int) -> Image.Image:
    base = tuple(int(v) for v in scene.background_rgb)
    if scene.texture == "plain":
        return Image.new("RGB", (width, height), base)
    period = max(3.0, scene.texture_period * min(width, height))
    shift = scene.texture_phase * period
    # Broadcast a column [1, W] against a row [H, 1]: masks are [H, W] without building grids.
    xx = np.arange(width, dtype=np.float32)[None, :] + shift
    yy = np.arange(height, dtype=np.float32)[:, None] + shift
    if scene.texture == "striped":
        if scene.stripe_direction == "vertical":
            mask = (xx // (period / 2)) % 2 == 1
        elif scene.stripe_direction == "horizontal":
            mask = (yy // (period / 2)) % 2 == 1
        else:
            mask = ((xx + yy) / math.sqrt(2) // (period / 2)) % 2 == 1
        mask = np.broadcast_to(mask, (height, width))
    elif scene.texture == "dotted":
        fx = (xx % period - period / 2) ** 2
        fy = (yy % period - period / 2) ** 2
        mask = fx + fy <= (0.28 * period) ** 2
    elif scene.texture == "checkered":
        mask = ((xx // period) % 2 == 1) ^ ((yy // period) % 2 == 1)
    else:
        raise ValueError(f"unknown texture {scene.texture!r}")
    image = Image.new("RGB", (width, height), base)
    # Pasting through an 8-bit mask is ~2x faster than numpy boolean assignment on [H, W, 3].
    alpha = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8) * np.uint8(255), "L")
    image.paste(_second_tone(scene.background_rgb), mask=alpha)
    return image


def render_scene(scene: Scene, width: int, height: int) -> Image.Image:
    """Draw ``scene`` on a ``width`` x ``height`` RGB canvas (deterministic)."""
    image = _background(scene, width, height)
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    shapes = [scene.main.shape] * scene.main.count + ([scene.extra.shape] if scene.extra else [])
    for shape, p in zip(shapes, scene.placements, strict=True):
        cx, cy, r = p.cx * width, p.cy * height, p.radius * short
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=p.rgb)
            continue
        a = math.radians(p.angle)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        pts = _POLYGONS[shape] @ rot.T * r + np.array([cx, cy])
        draw.polygon([tuple(pt) for pt in pts.tolist()], fill=p.rgb)
    return image
