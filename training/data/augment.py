"""Augmentation record and replay in Apple's compact DataCompDR format (docs/method.md §2.4).

One stored augmentation is ``[[i, j, h, w], [[op, magnitude], [op, magnitude]]]``:

- ``[i, j, h, w]``: the RandomResizedCrop box in **source-image pixels** (top, left, height,
  width), so the same view can be cut from the original image at any output resolution;
- ``[op, magnitude]``: a RandAugment op as an index into :data:`OP_NAMES` and its **signed
  strength**, in torchvision's RandAugment units (what ``_augmentation_space`` yields for the
  chosen bin, negated with probability 1/2 for signed ops). This is the unit Apple's generator
  stores (``apple/ml-mobileclip-dr``, ``RandAugment.compress_params``):

  ========================  =====================================  =======================
  op                        magnitude means                        range (31 bins, any bin)
  ========================  =====================================  =======================
  Identity, AutoContrast,   nothing (always 0)                     0
  Equalize
  ShearX, ShearY            shear factor (tan of the shear angle)  [-0.3, 0.3]
  TranslateX, TranslateY    pixels at a 224 px view (see below)    [-101.5, 101.5]
  Rotate                    degrees                                [-30, 30]
  Brightness, Color,        enhancement factor minus 1             [-0.9, 0.9]
  Contrast, Sharpness
  Posterize                 bits kept (unsigned)                   {4, ..., 8}
  Solarize                  threshold on the 0-255 scale           [0, 255]
  ========================  =====================================  =======================

Translations are the one resolution-dependent unit: torchvision measures them in pixels of the
view RandAugment sees, and Apple's generator saw 224 px views. We keep that unit (so released
parameters replay unchanged at 224 px) and scale it by ``out_size / 224`` on replay, so a
teacher at its resolution and the student at its resolution see the same geometric view.

Replay is PIL-based (uint8, like Apple's generator): crop, bicubic resize, then the ops with
nearest-neighbour resampling and black fill, as torchvision's RandAugment applies them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

OP_NAMES: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)
OP_INDEX: dict[str, int] = {name: i for i, name in enumerate(OP_NAMES)}

# View size in which recorded translations are measured (Apple's teacher resolution).
TRANSLATE_REFERENCE_SIZE = 224
_TRANSLATE_MAX = 150.0 / 331.0 * TRANSLATE_REFERENCE_SIZE
_ENHANCE_MAX = 0.9
_SIGNED_OPS = frozenset(
    {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
)
# Largest |magnitude| any bin of the RandAugment space produces; beyond it a record is corrupt.
_LIMITS: dict[str, float] = {
    "Identity": 0.0,
    "ShearX": 0.3,
    "ShearY": 0.3,
    "TranslateX": _TRANSLATE_MAX,
    "TranslateY": _TRANSLATE_MAX,
    "Rotate": 30.0,
    "Brightness": _ENHANCE_MAX,
    "Color": _ENHANCE_MAX,
    "Contrast": _ENHANCE_MAX,
    "Sharpness": _ENHANCE_MAX,
    "Posterize": 8.0,
    "Solarize": 255.0,
    "AutoContrast": 0.0,
    "Equalize": 0.0,
}
_TOL = 1e-6
_NEAREST = TF.InterpolationMode.NEAREST
_FILL = [0.0, 0.0, 0.0]

Box = tuple[int, int, int, int]
Ops = list[tuple[int, float]]


class AugParamsError(ValueError):
    """A stored augmentation record is malformed or out of range."""


def op_strength(op: int, magnitude_bin: int, num_bins: int) -> float:
    """Unsigned strength of ``op`` at ``magnitude_bin`` of ``num_bins`` (torchvision's table)."""
    name = OP_NAMES[op]
    frac = magnitude_bin / (num_bins - 1)
    if name in ("ShearX", "ShearY"):
        return 0.3 * frac
    if name in ("TranslateX", "TranslateY"):
        return _TRANSLATE_MAX * frac
    if name == "Rotate":
        return 30.0 * frac
    if name in ("Brightness", "Color", "Contrast", "Sharpness"):
        return _ENHANCE_MAX * frac
    if name == "Posterize":
        # 8 bits at bin 0 down to 4 bits at the last bin; half-to-even rounding as torch.round.
        return float(8 - int(np.round(magnitude_bin / ((num_bins - 1) / 4))))
    if name == "Solarize":
        return 255.0 * (1.0 - frac)
    return 0.0


def _sample_crop(
    rng: np.random.Generator, width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> Box:
    """RandomResizedCrop's box search: 10 tries of (area, log-uniform aspect), else a centre crop."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            i = int(rng.integers(0, height - h + 1))
            j = int(rng.integers(0, width - w + 1))
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, max(1, min(height, round(width / ratio[0])))
    elif in_ratio > ratio[1]:
        h, w = height, max(1, min(width, round(height * ratio[1])))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_aug_params(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    scale: tuple[float, float],
    num_ops: int,
    magnitude: int,
    num_bins: int,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),  # torchvision's RandomResizedCrop default
) -> list:
    """Draw one augmentation for a ``width`` x ``height`` source image, in the compact format.

    RandomResizedCrop (``scale``, ``ratio``) then RandAugment (``num_ops`` uniform ops at bin
    ``magnitude`` of ``num_bins``, signed ops negated with probability 1/2). No flip.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {ratio}")
    if num_bins < 2 or not 0 <= magnitude < num_bins:
        raise ValueError(f"magnitude must be a bin in [0, {num_bins - 1}] with num_bins >= 2, got {magnitude}")
    if num_ops < 0:
        raise ValueError(f"num_ops must be >= 0, got {num_ops}")
    i, j, h, w = _sample_crop(rng, width, height, scale, ratio)
    ops: list[list[Any]] = []
    for _ in range(num_ops):
        op = int(rng.integers(len(OP_NAMES)))
        strength = op_strength(op, magnitude, num_bins)
        if OP_NAMES[op] in _SIGNED_OPS and rng.integers(2):
            strength = -strength
        ops.append([op, float(strength)])
    return [[i, j, h, w], ops]


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise AugParamsError(f"{what} must be an integer, got {value!r}")
    if not math.isfinite(float(value)) or float(value) != int(value):
        raise AugParamsError(f"{what} must be an integer, got {value!r}")
    return int(value)


def validate_params(params: Any, width: int | None = None, height: int | None = None) -> tuple[Box, Ops]:
    """Check one record and return ``((i, j, h, w), [(op, magnitude), ...])``.

    With ``width``/``height`` the crop box must also lie inside that source image. A ``None``
    op list (Apple's record of a skipped RandAugment) replays as no ops.
    """
    if not isinstance(params, (list, tuple)) or len(params) != 2:
        raise AugParamsError(f"augmentation must be [[i, j, h, w], [[op, magnitude], ...]], got {params!r}")
    raw_box, raw_ops = params
    if not isinstance(raw_box, (list, tuple)) or len(raw_box) != 4:
        raise AugParamsError(f"crop box must be [i, j, h, w], got {raw_box!r}")
    i, j, h, w = (_as_int(v, f"crop box {name}") for v, name in zip(raw_box, "ijhw", strict=True))
    if i < 0 or j < 0 or h < 1 or w < 1:
        raise AugParamsError(f"crop box [i={i}, j={j}, h={h}, w={w}] needs i, j >= 0 and h, w >= 1")
    if width is not None and height is not None and (i + h > height or j + w > width):
        raise AugParamsError(f"crop box [i={i}, j={j}, h={h}, w={w}] exceeds the {width}x{height} source image")
    ops: Ops = []
    if raw_ops is None:
        return (i, j, h, w), ops
    if not isinstance(raw_ops, (list, tuple)):
        raise AugParamsError(f"ops must be a list of [op, magnitude], got {raw_ops!r}")
    for entry in raw_ops:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise AugParamsError(f"op must be [op, magnitude], got {entry!r}")
        op = _as_int(entry[0], "op index")
        if not 0 <= op < len(OP_NAMES):
            raise AugParamsError(f"op index {op} outside [0, {len(OP_NAMES) - 1}]")
        mag = entry[1]
        if isinstance(mag, bool) or not isinstance(mag, (int, float, np.integer, np.floating)):
            raise AugParamsError(f"magnitude of {OP_NAMES[op]} must be a number, got {mag!r}")
        mag = float(mag)
        name = OP_NAMES[op]
        limit = _LIMITS[name]
        if not math.isfinite(mag) or abs(mag) > limit + _TOL:
            raise AugParamsError(f"magnitude {mag} of {name} outside [-{limit}, {limit}]")
        if name not in _SIGNED_OPS and mag < 0:
            raise AugParamsError(f"magnitude of unsigned op {name} must be >= 0, got {mag}")
        if name == "Posterize" and (mag != int(mag) or not 4 <= mag <= 8):
            raise AugParamsError(f"Posterize keeps an integer 4..8 bits, got {mag}")
        ops.append((op, mag))
    return (i, j, h, w), ops


def _apply_op(view: Image.Image, op: int, mag: float, out_size: int) -> Image.Image:
    """One RandAugment op on a uint8 RGB view, as torchvision applies it."""
    name = OP_NAMES[op]
    if name in ("ShearX", "ShearY"):
        # Shear about the top-left corner: torchvision's convention (angle = atan(factor)).
        angle = math.degrees(math.atan(mag))
        shear = [angle, 0.0] if name == "ShearX" else [0.0, angle]
        return TF.affine(
            view, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=_NEAREST, fill=_FILL, center=[0, 0]
        )
    if name in ("TranslateX", "TranslateY"):
        # Recorded at a 224 px view; int() truncates toward zero like torchvision.
        pixels = int(mag * out_size / TRANSLATE_REFERENCE_SIZE)
        shift = [pixels, 0] if name == "TranslateX" else [0, pixels]
        return TF.affine(
            view, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=_NEAREST, fill=_FILL
        )
    if name == "Rotate":
        return TF.rotate(view, mag, interpolation=_NEAREST, fill=_FILL)
    if name == "Brightness":
        return TF.adjust_brightness(view, 1.0 + mag)
    if name == "Color":
        return TF.adjust_saturation(view, 1.0 + mag)
    if name == "Contrast":
        return TF.adjust_contrast(view, 1.0 + mag)
    if name == "Sharpness":
        return TF.adjust_sharpness(view, 1.0 + mag)
    if name == "Posterize":
        return TF.posterize(view, int(mag))
    if name == "Solarize":
        return TF.solarize(view, mag)
    if name == "AutoContrast":
        return TF.autocontrast(view)
    if name == "Equalize":
        return TF.equalize(view)
    return view  # Identity


def replay_view(image: Image.Image, params: Any, out_size: int) -> Image.Image:
    """The recorded view as a uint8 RGB PIL image of ``out_size`` x ``out_size``."""
    if out_size < 1:
        raise ValueError(f"out_size must be >= 1, got {out_size}")
    (i, j, h, w), ops = validate_params(params, image.width, image.height)
    if image.mode != "RGB":
        image = image.convert("RGB")
    # Crop then resize (not resize(box=...), whose filter reads pixels outside the box): the
    # same as torchvision's resized_crop on a PIL image.
    view = image.crop((j, i, j + w, i + h)).resize((out_size, out_size), Image.Resampling.BICUBIC)
    for op, mag in ops:
        view = _apply_op(view, op, mag, out_size)
    return view


def replay_aug(image: Image.Image, params: Any, out_size: int) -> torch.Tensor:
    """Replay one stored augmentation: [3, out_size, out_size] float32 in [0, 1]. Deterministic."""
    view = replay_view(image, params, out_size)
    return TF.pil_to_tensor(view).float().div_(255.0)


def replay_many(image: Image.Image, params_list: Sequence[Any], out_size: int) -> torch.Tensor:
    """Replay several augmentations of one image: [A, 3, out_size, out_size]."""
    return torch.stack([replay_aug(image, p, out_size) for p in params_list])
