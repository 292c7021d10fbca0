"""Synthetic scenes for the embedded corpus: sampling, drawing (PIL) and captions.

A scene is a group of 1-4 identical main objects (shape, colour, size, position), optionally
one second object of another shape, on a plain or textured background. Everything random
about a scene (attributes, layout, colour jitter, texture period) is drawn once by
:func:`sample_scene` from a numpy ``Generator``; :func:`render_scene` is then a pure function
of the scene, so the same seed always gives the same pixels.

Captions come in the kinds the pool needs to behave like web alt-text: ``full`` (every
attribute, varied phrasing), ``partial`` (some attributes), ``wrong`` (another scene's),
``junk`` (file names, "click here", empty) and ``non_english`` (German, French, Spanish).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

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
CAPTION_KINDS: tuple[str, ...] = ("full", "partial", "wrong", "junk", "non_english")
LANGUAGES: tuple[str, ...] = ("de", "fr", "es")

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


# ---------------------------------------------------------------- sampling


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


# ---------------------------------------------------------------- drawing


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


# ---------------------------------------------------------------- English captions

_SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
_TEXTURE_WORDS = {
    "plain": ("plain", "solid", ""),
    "striped": ("striped",),
    "dotted": ("dotted", "polka-dot"),
    "checkered": ("checkered", "checkerboard"),
}
_POSITION_PHRASES = {
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "center": ("in the center", "in the middle"),
}
# Full-caption templates: {objs} every object, {main}/{extra} the groups, {pos} where the main
# group is, {bg} "a striped green background", {be} "is"/"are". Eight so that five distinct
# captions per retrieval image always exist.
_FULL_TEMPLATES: tuple[str, ...] = (
    "{objs} on {bg}",
    "a picture of {objs} on {bg}",
    "{main} {pos}{and_extra} on {bg}",
    "{bg} with {objs}",
    "{objs} against {bg}",
    "there {be} {objs} on {bg}",
    "a drawing of {objs} {pos_of_main}, on {bg}",
    "an image showing {objs} on {bg}",
)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def group_phrase(
    group: Group,
    rng: np.random.Generator,
    *,
    with_count: bool = True,
    with_size: bool = True,
    with_color: bool = True,
    with_shape: bool = True,
) -> str:
    """ "two large red circles", "a small blue star"; attributes can be left out (partial captions)."""
    words: list[str] = []
    if with_size:
        words.append(_pick(rng, _SIZE_WORDS[group.size]))
    if with_color:
        words.append(group.color)
    plural = group.count > 1
    if with_shape:
        words.append(SHAPE_PLURALS[group.shape] if plural else group.shape)
    else:
        words.append(_pick(rng, ("shapes", "objects")) if plural else _pick(rng, ("shape", "object")))
    if with_count:
        if plural:
            words.insert(0, COUNT_WORDS[group.count - 1])
        else:
            words.insert(0, "one" if rng.random() < 0.3 else _article(words[0]))
    elif not plural and rng.random() < 0.5:
        words.insert(0, _article(words[0]))
    return " ".join(words)


def background_phrase(scene: Scene, rng: np.random.Generator, *, with_color: bool = True) -> str:
    """ "a striped green background" (with its article)."""
    words = [w for w in (_pick(rng, _TEXTURE_WORDS[scene.texture]), scene.background if with_color else "") if w]
    words.append("background")
    return f"{_article(words[0])} {' '.join(words)}"


def full_caption(scene: Scene, rng: np.random.Generator, template: int | None = None) -> str:
    """A caption naming every attribute (position in most templates), phrasing varied by ``rng``."""
    index = int(rng.integers(len(_FULL_TEMPLATES))) if template is None else template
    main = group_phrase(scene.main, rng)
    extra = group_phrase(scene.extra, rng) if scene.extra else ""
    objs = f"{main} and {extra}" if extra else main
    bg = background_phrase(scene, rng)
    pos = _pick(rng, _POSITION_PHRASES[scene.main.position or "center"])
    return _FULL_TEMPLATES[index].format(
        objs=objs,
        main=main,
        pos=pos,
        and_extra=f" and {extra}" if extra else "",
        bg=bg,
        be="is" if scene.main.count == 1 and not extra else "are",
        pos_of_main=pos,
    )


def full_captions(scene: Scene, rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct full captions (different templates) for one scene, e.g. retrieval targets."""
    if n > len(_FULL_TEMPLATES):
        raise ValueError(f"at most {len(_FULL_TEMPLATES)} distinct full captions per scene, asked for {n}")
    order = rng.permutation(len(_FULL_TEMPLATES))[:n]
    return [full_caption(scene, rng, int(t)) for t in order]


def partial_caption(scene: Scene, rng: np.random.Generator) -> str:
    """Some attributes only ("red circles", "two stars on the left", "green background")."""
    keep = {k: rng.random() < p for k, p in (("count", 0.4), ("size", 0.35), ("color", 0.5), ("shape", 0.85))}
    with_pos = rng.random() < 0.25
    with_bg = rng.random() < 0.3
    if all(keep.values()) and (with_pos or with_bg):
        keep["size"] = False  # partial means something is missing
    if not any(keep.values()):
        if with_bg:
            return background_phrase(scene, rng)
        keep["shape"] = True
    text = group_phrase(
        scene.main,
        rng,
        with_count=keep["count"],
        with_size=keep["size"],
        with_color=keep["color"],
        with_shape=keep["shape"],
    )
    if with_pos:
        text += " " + _pick(rng, _POSITION_PHRASES[scene.main.position or "center"])
    if with_bg:
        text += " on " + background_phrase(scene, rng, with_color=rng.random() < 0.6)
    if rng.random() < 0.2:
        text = text.capitalize()
    return text


_JUNK_FIXED = (
    "",
    "image",
    "photo",
    "click here",
    "untitled",
    "thumbnail",
    "download",
    "null",
    "placeholder",
    "Buy now!",
)
_JUNK_FORMATS = ("IMG_{n:04d}.jpg", "DSC{n:05d}", "image{n:03d}.png", "photo_{n}.jpeg", "Screenshot {n}")


def junk_caption(rng: np.random.Generator) -> str:
    """Alt-text with no description: file names, UI words, empty."""
    if rng.random() < 0.5:
        return _pick(rng, _JUNK_FIXED)
    return _pick(rng, _JUNK_FORMATS).format(n=int(rng.integers(1, 10000)))


def wrong_caption(scene: Scene, rng: np.random.Generator, width: int, height: int) -> str:
    """A caption of another scene whose main shape or colour differs from ``scene``'s."""
    while True:
        other = sample_scene(rng, width, height)
        if (other.main.shape, other.main.color) != (scene.main.shape, scene.main.color):
            break
    return full_caption(other, rng) if rng.random() < 0.5 else partial_caption(other, rng)


# ---------------------------------------------------------------- other languages

# Per shape: (gender, singular, plural); per colour: forms the grammar below needs.
_DE_SHAPES = {
    "circle": ("m", "Kreis", "Kreise"),
    "square": ("n", "Quadrat", "Quadrate"),
    "triangle": ("n", "Dreieck", "Dreiecke"),
    "star": ("m", "Stern", "Sterne"),
    "cross": ("n", "Kreuz", "Kreuze"),
    "heart": ("n", "Herz", "Herzen"),
}
_DE_COLORS = {
    "red": "rot",
    "orange": "orange",
    "yellow": "gelb",
    "green": "grün",
    "blue": "blau",
    "purple": "lila",
    "white": "weiß",
    "black": "schwarz",
}
_DE_INVARIANT = {"orange", "lila"}
_DE_SIZES = {"small": "klein", "large": "groß"}
_DE_COUNTS = ("ein", "zwei", "drei", "vier")
_DE_TEXTURES = {"plain": "", "striped": "gestreift", "dotted": "gepunktet", "checkered": "kariert"}

_FR_SHAPES = {
    "circle": ("m", "cercle", "cercles"),
    "square": ("m", "carré", "carrés"),
    "triangle": ("m", "triangle", "triangles"),
    "star": ("f", "étoile", "étoiles"),
    "cross": ("f", "croix", "croix"),
    "heart": ("m", "cœur", "cœurs"),
}
# (masc. sing., fem. sing., masc. plural, fem. plural)
_FR_COLORS = {
    "red": ("rouge", "rouge", "rouges", "rouges"),
    "orange": ("orange", "orange", "orange", "orange"),
    "yellow": ("jaune", "jaune", "jaunes", "jaunes"),
    "green": ("vert", "verte", "verts", "vertes"),
    "blue": ("bleu", "bleue", "bleus", "bleues"),
    "purple": ("violet", "violette", "violets", "violettes"),
    "white": ("blanc", "blanche", "blancs", "blanches"),
    "black": ("noir", "noire", "noirs", "noires"),
}
_FR_SIZES = {"small": ("petit", "petite", "petits", "petites"), "large": ("grand", "grande", "grands", "grandes")}
_FR_COUNTS = ("un", "deux", "trois", "quatre")
_FR_TEXTURES = {"plain": " uni", "striped": " à rayures", "dotted": " à pois", "checkered": " à carreaux"}

_ES_SHAPES = {
    "circle": ("m", "círculo", "círculos"),
    "square": ("m", "cuadrado", "cuadrados"),
    "triangle": ("m", "triángulo", "triángulos"),
    "star": ("f", "estrella", "estrellas"),
    "cross": ("f", "cruz", "cruces"),
    "heart": ("m", "corazón", "corazones"),
}
_ES_COLORS = {
    "red": ("rojo", "roja", "rojos", "rojas"),
    "orange": ("naranja", "naranja", "naranjas", "naranjas"),
    "yellow": ("amarillo", "amarilla", "amarillos", "amarillas"),
    "green": ("verde", "verde", "verdes", "verdes"),
    "blue": ("azul", "azul", "azules", "azules"),
    "purple": ("morado", "morada", "morados", "moradas"),
    "white": ("blanco", "blanca", "blancos", "blancas"),
    "black": ("negro", "negra", "negros", "negras"),
}
_ES_SIZES = {
    "small": ("pequeño", "pequeña", "pequeños", "pequeñas"),
    "large": ("grande", "grande", "grandes", "grandes"),
}
_ES_COUNTS = ("un", "dos", "tres", "cuatro")
_ES_TEXTURES = {"plain": " liso", "striped": " a rayas", "dotted": " de lunares", "checkered": " a cuadros"}


def _form(gender: str, plural: bool) -> int:
    return (2 if plural else 0) + (1 if gender == "f" else 0)


def _de_group(g: Group, with_size: bool) -> str:
    gender, sing, plur = _DE_SHAPES[g.shape]
    plural = g.count > 1
    # Strong adjective endings: plural without article -e; after "ein" -er (m) / -es (n).
    ending = "e" if plural else ("er" if gender == "m" else "es")
    adjectives = ([_DE_SIZES[g.size]] if with_size else []) + [_DE_COLORS[g.color]]
    inflected = [a if a in _DE_INVARIANT else a + ending for a in adjectives]
    return " ".join([_DE_COUNTS[g.count - 1], *inflected, plur if plural else sing])


def _fr_group(g: Group, with_size: bool) -> str:
    gender, sing, plur = _FR_SHAPES[g.shape]
    plural = g.count > 1
    form = _form(gender, plural)
    count = _FR_COUNTS[g.count - 1] if plural else ("une" if gender == "f" else "un")
    size = [_FR_SIZES[g.size][form]] if with_size else []
    return " ".join([count, *size, plur if plural else sing, _FR_COLORS[g.color][form]])


def _es_group(g: Group, with_size: bool) -> str:
    gender, sing, plur = _ES_SHAPES[g.shape]
    plural = g.count > 1
    form = _form(gender, plural)
    count = _ES_COUNTS[g.count - 1] if plural else ("una" if gender == "f" else "un")
    size = [_ES_SIZES[g.size][form]] if with_size else []
    return " ".join([count, plur if plural else sing, _ES_COLORS[g.color][form], *size])


def translated_caption(scene: Scene, rng: np.random.Generator, language: str | None = None) -> str:
    """A simple German, French or Spanish caption (sometimes without size, extra or background)."""
    lang = language or _pick(rng, LANGUAGES)
    with_size = rng.random() < 0.6
    with_extra = scene.extra is not None and rng.random() < 0.6
    with_bg = rng.random() < 0.7
    if lang == "de":
        text = _de_group(scene.main, with_size)
        if with_extra and scene.extra:
            text += " und " + _de_group(scene.extra, rng.random() < 0.5)
        if with_bg:
            tex = _DE_TEXTURES[scene.texture]
            color = _DE_COLORS[scene.background]
            color = color if color in _DE_INVARIANT else color + "em"
            text += " auf " + " ".join(w for w in (tex + "em" if tex else "", color, "Hintergrund") if w)
        return text
    if lang == "fr":
        text = _fr_group(scene.main, with_size)
        if with_extra and scene.extra:
            text += " et " + _fr_group(scene.extra, rng.random() < 0.5)
        if with_bg:
            text += f" sur fond {_FR_COLORS[scene.background][0]}{_FR_TEXTURES[scene.texture]}"
        return text
    if lang == "es":
        text = _es_group(scene.main, with_size)
        if with_extra and scene.extra:
            text += " y " + _es_group(scene.extra, rng.random() < 0.5)
        if with_bg:
            text += f" sobre fondo {_ES_COLORS[scene.background][0]}{_ES_TEXTURES[scene.texture]}"
        return text
    raise ValueError(f"unknown language {lang!r}; expected one of {LANGUAGES}")
