"""Non-English captions (German, French, Spanish) of a scene: the pool's non_english kind."""

from __future__ import annotations

import numpy as np

from pipelines.embedded.captions import pick_word
from pipelines.embedded.scenes import Group, Scene

LANGUAGES: tuple[str, ...] = ("de", "fr", "es")

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
    lang = language or pick_word(rng, LANGUAGES)
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
