"""English captions of a scene, in the kinds web alt-text comes in: full (every attribute, varied
phrasing), partial (some attributes), wrong (another scene's) and junk (file names, "click
here", empty).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import numpy as np

from pipelines.embedded.scenes import COUNT_WORDS, COUNTS, SHAPE_PLURALS, SHAPES, Group, Scene, sample_scene

CAPTION_KINDS: tuple[str, ...] = ("full", "partial", "wrong", "junk", "non_english")

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
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
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


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def pick_word(rng: np.random.Generator, options: tuple[str, ...]) -> str:
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
        words.append(pick_word(rng, SIZE_WORDS[group.size]))
    if with_color:
        words.append(group.color)
    plural = group.count > 1
    if with_shape:
        words.append(SHAPE_PLURALS[group.shape] if plural else group.shape)
    else:
        words.append(pick_word(rng, ("shapes", "objects")) if plural else pick_word(rng, ("shape", "object")))
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
    words = [w for w in (pick_word(rng, _TEXTURE_WORDS[scene.texture]), scene.background if with_color else "") if w]
    words.append("background")
    return f"{_article(words[0])} {' '.join(words)}"


def full_caption(scene: Scene, rng: np.random.Generator, template: int | None = None) -> str:
    """A caption naming every attribute (position in most templates), phrasing varied by ``rng``."""
    index = int(rng.integers(len(_FULL_TEMPLATES))) if template is None else template
    main = group_phrase(scene.main, rng)
    extra = group_phrase(scene.extra, rng) if scene.extra else ""
    objs = f"{main} and {extra}" if extra else main
    bg = background_phrase(scene, rng)
    pos = pick_word(rng, _POSITION_PHRASES[scene.main.position or "center"])
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
        text += " " + pick_word(rng, _POSITION_PHRASES[scene.main.position or "center"])
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
        return pick_word(rng, _JUNK_FIXED)
    return pick_word(rng, _JUNK_FORMATS).format(n=int(rng.integers(1, 10000)))


def wrong_caption(scene: Scene, rng: np.random.Generator, width: int, height: int) -> str:
    """A caption of another scene whose main shape or colour differs from ``scene``'s."""
    while True:
        other = sample_scene(rng, width, height)
        if (other.main.shape, other.main.color) != (scene.main.shape, scene.main.color):
            break
    return full_caption(other, rng) if rng.random() < 0.5 else partial_caption(other, rng)


def _perturbations(scene: Scene, rng: np.random.Generator) -> list[Scene]:
    """The scene with one attribute of its main group changed, hardest first: the object's and
    the background's colours swapped (what a model that names the largest colour confuses),
    then another shape, then another count."""
    main = scene.main
    swapped = dataclasses.replace(scene, main=dataclasses.replace(main, color=scene.background), background=main.color)
    shape = str(rng.choice([s for s in SHAPES if s != main.shape]))
    count = int(rng.choice([c for c in COUNTS if c != main.count]))
    return [
        swapped,
        dataclasses.replace(scene, main=dataclasses.replace(main, shape=shape)),
        dataclasses.replace(scene, main=dataclasses.replace(main, count=count)),
    ]


def with_hard_negative(
    scene: Scene, caption: Callable[[Scene, np.random.Generator], str], rng: np.random.Generator
) -> tuple[str, str]:
    """(caption, hard negative): the same words for a scene one attribute away (NegCLIP-style).

    Both captions are drawn from the same random state, so they differ only where the scenes
    do; the first perturbation the caption actually mentions is used, and a caption that
    mentions none gets the full caption of the colour-swapped scene.
    """
    candidates = _perturbations(scene, rng)
    start = copy.deepcopy(rng.bit_generator.state)
    positive = caption(scene, rng)
    after = copy.deepcopy(rng.bit_generator.state)
    for other in candidates:
        replay = np.random.Generator(type(rng.bit_generator)())
        replay.bit_generator.state = copy.deepcopy(start)
        negative = caption(other, replay)
        if negative != positive:
            break
    else:
        negative = full_caption(candidates[0], rng)
    rng.bit_generator.state = after
    return positive, negative
