"""Synthetic scenes for the embedded corpus: the vocabulary, the scene record and its sampling.

A scene is a group of 1-4 identical main objects (shape, colour, size, position), optionally
one second object of another shape, on a plain or textured background. Everything random
about a scene (attributes, layout, colour jitter, texture period) is drawn once by
:func:`sample_scene` from a numpy ``Generator``; drawing (``render``) and captions
(``captions``, ``translations``) are then functions of the scene.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart")
SHAPE_PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
    "cross": "crosses",
    "heart": "hearts",
}

# Named colours, far apart in RGB so a small model can tell them apart at 24-96 px.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (250, 135, 10),
    "yellow": (245, 215, 25),
    "green": (35, 155, 55),
    "blue": (35, 75, 215),
    "purple": (130, 45, 170),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZES: tuple[str, ...] = ("small", "large")
COUNTS: tuple[int, ...] = (1, 2, 3, 4)
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
TEXTURES: tuple[str, ...] = ("plain", "striped", "dotted", "checkered")

# Object radius as a fraction of the canvas' shorter side, before a +-10% jitter.
_RADIUS = {"small": 0.085, "large": 0.17}

# Where a group's object centres may lie: (x0, y0, x1, y1) as fractions of the canvas.
_REGIONS = {
    "left": (0.0, 0.0, 0.38, 1.0),
    "right": (0.62, 0.0, 1.0, 1.0),
    "top": (0.0, 0.0, 1.0, 0.38),
    "bottom": (0.0, 0.62, 1.0, 1.0),
    "center": (0.2, 0.2, 0.8, 0.8),
}
_GAP = 0.03  # minimum free space between objects, fraction of the shorter side


@dataclass(frozen=True)
class Group:
    """A set of identical objects; ``position`` is None for the second object."""

    shape: str
    color: str
    size: str
    count: int
    position: str | None


@dataclass(frozen=True)
class Placement:
    """One drawn object: centre as fractions of width/height, radius as fraction of the shorter side."""

    cx: float
    cy: float
    radius: float
    angle: float  # degrees
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    main: Group
    extra: Group | None
    texture: str
    background: str  # colour name
    background_rgb: tuple[int, int, int]
    # Texture geometry: period as a fraction of the shorter side, phase in [0, 1), stripe direction.
    texture_period: float
    texture_phase: float
    stripe_direction: str  # "vertical" | "horizontal" | "diagonal"
    placements: tuple[Placement, ...]  # main group first, then the second object

    def attributes(self) -> dict[str, Any]:
        """JSON-able ground truth (what the teacher corpus stores as KEY.json)."""
        return {
            "main": asdict(self.main),
            "extra": asdict(self.extra) if self.extra is not None else None,
            "texture": self.texture,
            "background": self.background,
            "num_objects": len(self.placements),
        }


def _jitter_rgb(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    deltas = rng.integers(-amount, amount + 1, size=3).tolist()
    return tuple(min(255, max(0, c + d)) for c, d in zip(rgb, deltas, strict=True))  # type: ignore[return-value]


def _place_group(
    rng: np.random.Generator,
    radii: list[float],
    region: tuple[float, float, float, float],
    width: int,
    height: int,
    taken: list[tuple[float, float, float]],
    tries: int = 25,
) -> list[tuple[float, float]] | None:
    """Rejection-sample non-overlapping centres (pixels) inside ``region``; None if it never fits."""
    gap = _GAP * min(width, height)
    for _ in range(tries):
        occupied = np.asarray(taken, dtype=float).reshape(-1, 3)  # [K, 3]: x, y, radius
        centres: list[tuple[float, float]] = []
        for r in radii:
            # The object must lie inside the canvas; its centre inside the region.
            x_lo, x_hi = max(region[0] * width, r + 1), min(region[2] * width, width - r - 1)
            y_lo, y_hi = max(region[1] * height, r + 1), min(region[3] * height, height - r - 1)
            if x_lo > x_hi or y_lo > y_hi:
                return None
            # 32 candidates at once: [32, 2]; keep the first clear of every placed object.
            cand = rng.uniform((x_lo, y_lo), (x_hi, y_hi), size=(32, 2))
            dist = np.hypot(cand[:, None, 0] - occupied[None, :, 0], cand[:, None, 1] - occupied[None, :, 1])
            ok = np.all(dist >= r + occupied[None, :, 2] + gap, axis=1)  # [32]
            if not ok.any():
                break
            x, y = cand[int(np.argmax(ok))]
            centres.append((float(x), float(y)))
            occupied = np.vstack([occupied, [x, y, r]])
        if len(centres) == len(radii):
            return centres
    return None


def sample_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    shape: str | None = None,
    color: str | None = None,
    count: int | None = None,
    texture: str | None = None,
    allow_extra: bool = True,
    extra_probability: float = 0.4,
) -> Scene:
    """Draw a random scene laid out for a ``width`` x ``height`` canvas; keyword args pin attributes."""
    short = min(width, height)
    main_shape = shape or str(rng.choice(SHAPES))
    main_color = color or str(rng.choice(COLOR_NAMES))
    main_size = str(rng.choice(SIZES))
    main_count = count or int(rng.choice(COUNTS))
    position = str(rng.choice(POSITIONS))
    has_extra = allow_extra and rng.random() < extra_probability
    extra: Group | None = None
    if has_extra:
        extra = Group(
            shape=str(rng.choice([s for s in SHAPES if s != main_shape])),
            color=str(rng.choice(COLOR_NAMES)),
            size=str(rng.choice(SIZES)),
            count=1,
            position=None,
        )
    used_colors = {main_color} | ({extra.color} if extra else set())
    background = str(rng.choice([c for c in COLOR_NAMES if c not in used_colors]))
    tex = texture or str(rng.choice(TEXTURES))

    main_radii = [_RADIUS[main_size] * short * rng.uniform(0.9, 1.1) for _ in range(main_count)]
    # Three or four large objects rarely fit one half of the canvas: such crowded groups are
    # spread over the whole canvas and called "center", where their centroid then lies.
    crowded = main_size == "large" and main_count >= 3
    centres = None if crowded else _place_group(rng, main_radii, _REGIONS[position], width, height, [])
    if centres is None:
        position = "center"
        centres = _place_group(rng, main_radii, (0.0, 0.0, 1.0, 1.0), width, height, [], tries=200)
    if centres is None:  # pragma: no cover - four large objects always fit the full canvas
        raise RuntimeError(f"cannot lay out {main_count} {main_size} objects on {width}x{height}")
    main = Group(main_shape, main_color, main_size, main_count, position)

    placements = [
        Placement(
            cx=x / width,
            cy=y / height,
            radius=r / short,
            angle=float(rng.uniform(-15, 15)),
            rgb=_jitter_rgb(rng, COLORS[main_color], 14),
        )
        for (x, y), r in zip(centres, main_radii, strict=True)
    ]
    if extra is not None:
        r = _RADIUS[extra.size] * short * rng.uniform(0.9, 1.1)
        taken = [(x, y, rr) for (x, y), rr in zip(centres, main_radii, strict=True)]
        spot = _place_group(rng, [r], (0.0, 0.0, 1.0, 1.0), width, height, taken)
        if spot is None:
            extra = None  # no room left: the scene (and so its caption) has no second object
        else:
            (x, y) = spot[0]
            placements.append(
                Placement(
                    x / width,
                    y / height,
                    r / short,
                    float(rng.uniform(-15, 15)),
                    _jitter_rgb(rng, COLORS[extra.color], 14),
                )
            )
    return Scene(
        main=main,
        extra=extra,
        texture=tex,
        background=background,
        background_rgb=_jitter_rgb(rng, COLORS[background], 8),
        texture_period=float(rng.uniform(0.09, 0.16)),
        texture_phase=float(rng.random()),
        stripe_direction=str(rng.choice(["vertical", "horizontal", "diagonal"])),
        placements=tuple(placements),
    )
