"""Augmentation record/replay: format, determinism, torchvision equivalence, validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms.autoaugment import _apply_op

from tests.conftest import aug_settings
from training.data.augment import (
    OP_INDEX,
    OP_NAMES,
    AugParamsError,
    op_strength,
    replay_aug,
    replay_many,
    replay_view,
    sample_aug_params,
    validate_params,
)


def _image(width: int = 80, height: int = 60, seed: int = 0) -> Image.Image:
    """Low-contrast structured RGB image (values 60..190): every op has something to change."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 60 + 100 * (xx / width)[..., None] * np.array([1.0, 0.6, 0.3]) + 30 * (yy / height)[..., None]
    noise = rng.integers(0, 12, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def test_sampled_params_have_the_compact_format() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        params = sample_aug_params(rng, 80, 60, **aug_settings())
        assert json.loads(json.dumps(params)) == params  # plain JSON types
        (i, j, h, w), ops = params
        assert all(isinstance(v, int) for v in (i, j, h, w))
        assert min(i, j) >= 0 and i + h <= 60 and j + w <= 80
        assert 0.07 <= h * w / (80 * 60) <= 1.0
        assert len(ops) == 2
        for op, mag in ops:
            assert 0 <= op < len(OP_NAMES)
            assert abs(mag) == pytest.approx(op_strength(op, 9, 31))
        validate_params(params, 80, 60)


def test_sampling_is_seeded_and_uses_the_magnitude_bin() -> None:
    a = [sample_aug_params(np.random.default_rng(7), 50, 40, **aug_settings()) for _ in range(3)]
    b = [sample_aug_params(np.random.default_rng(7), 50, 40, **aug_settings()) for _ in range(3)]
    assert a == b
    # torchvision's RandAugment table at bin 9 of 31.
    assert op_strength(OP_INDEX["Rotate"], 9, 31) == pytest.approx(9.0)
    assert op_strength(OP_INDEX["ShearX"], 9, 31) == pytest.approx(0.09)
    assert op_strength(OP_INDEX["Posterize"], 9, 31) == 7.0
    assert op_strength(OP_INDEX["Solarize"], 9, 31) == pytest.approx(178.5)
    assert op_strength(OP_INDEX["TranslateX"], 30, 31) == pytest.approx(150 / 331 * 224)
    # Signed ops come out with both signs.
    rng = np.random.default_rng(1)
    signs = {
        np.sign(m)
        for _ in range(300)
        for op, m in sample_aug_params(rng, 50, 40, **aug_settings())[1]
        if op == OP_INDEX["Rotate"]
    }
    assert signs == {-1.0, 1.0}


def test_extreme_aspect_falls_back_to_a_valid_box() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        params = sample_aug_params(rng, 300, 12, **aug_settings(scale=(0.9, 1.0)))
        validate_params(params, 300, 12)


def test_replay_is_deterministic() -> None:
    image = _image()
    rng = np.random.default_rng(5)
    for _ in range(20):
        params = sample_aug_params(rng, image.width, image.height, **aug_settings())
        first = replay_aug(image, params, 48)
        second = replay_aug(image.copy(), json.loads(json.dumps(params)), 48)
        assert first.shape == (3, 48, 48) and first.dtype == torch.float32
        assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
        assert torch.equal(first, second)


def test_identity_crop_equals_torchvision_resized_crop() -> None:
    image = _image(97, 71)
    for i, j, h, w in [(0, 0, 71, 97), (5, 11, 40, 33), (30, 60, 41, 37)]:
        params = [[i, j, h, w], [[0, 0.0], [0, 0.0]]]
        expected = TF.resized_crop(image, i, j, h, w, [40, 40], interpolation=TF.InterpolationMode.BICUBIC)
        assert torch.equal(replay_aug(image, params, 40), TF.pil_to_tensor(expected).float() / 255.0)


@pytest.mark.parametrize("op", range(1, len(OP_NAMES)))
def test_every_op_changes_pixels(op: int) -> None:
    image = _image()
    box = [4, 6, 50, 70]
    identity = replay_aug(image, [box, [[0, 0.0], [0, 0.0]]], 64)
    changed = replay_aug(image, [box, [[op, op_strength(op, 9, 31)], [0, 0.0]]], 64)
    assert not torch.equal(identity, changed), OP_NAMES[op]


def test_identity_op_changes_nothing() -> None:
    image = _image()
    plain = replay_aug(image, [[4, 6, 50, 70], []], 64)
    assert torch.equal(plain, replay_aug(image, [[4, 6, 50, 70], [[0, 0.0], [0, 0.0]]], 64))
    # Apple records a skipped RandAugment as None.
    assert torch.equal(plain, replay_aug(image, [[4, 6, 50, 70], None], 64))


@pytest.mark.parametrize("op", range(len(OP_NAMES)))
def test_ops_match_torchvision_randaugment_at_224(op: int) -> None:
    """At Apple's 224 px view each op is exactly torchvision's RandAugment op (their generator)."""
    image = _image(120, 90)
    box = [3, 5, 80, 100]
    mag = (
        -op_strength(op, 9, 31)
        if OP_NAMES[op] in {"ShearX", "TranslateY", "Rotate", "Contrast"}
        else op_strength(op, 9, 31)
    )
    ours = replay_view(image, [box, [[op, mag]]], 224)
    base = replay_view(image, [box, []], 224)
    theirs = _apply_op(base, OP_NAMES[op], mag, interpolation=TF.InterpolationMode.NEAREST, fill=None)
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_translation_scales_with_the_output_resolution() -> None:
    image = _image()
    box = [0, 0, 60, 80]
    mag = op_strength(OP_INDEX["TranslateX"], 9, 31)  # 30.45 px at 224
    for size in (112, 64):
        shift = int(mag * size / 224)
        plain = replay_aug(image, [box, []], size)
        moved = replay_aug(image, [box, [[OP_INDEX["TranslateX"], mag]]], size)
        assert shift > 0
        assert torch.equal(moved[:, :, shift:], plain[:, :, :-shift])
        assert float(moved[:, :, :shift].abs().max()) == 0.0


def test_replay_many_stacks() -> None:
    image = _image()
    rng = np.random.default_rng(2)
    params = [sample_aug_params(rng, image.width, image.height, **aug_settings()) for _ in range(4)]
    views = replay_many(image, params, 32)
    assert views.shape == (4, 3, 32, 32)
    assert torch.equal(views[2], replay_aug(image, params[2], 32))


@pytest.mark.parametrize(
    "params",
    [
        None,
        [[0, 0, 10, 10]],
        [[0, 0, 10], []],
        [[0, 0, 10, 10.5], []],
        [[0, 0, "10", 10], []],
        [[True, 0, 10, 10], []],
        [[-1, 0, 10, 10], []],
        [[0, 0, 0, 10], []],
        [[50, 0, 20, 10], []],  # i + h > height 60
        [[0, 75, 10, 10], []],  # j + w > width 80
        [[0, 0, 10, 10], [[14, 0.0]]],
        [[0, 0, 10, 10], [[-1, 0.0]]],
        [[0, 0, 10, 10], [[5, 45.0]]],  # Rotate beyond 30 degrees
        [[0, 0, 10, 10], [[1, 0.5]]],  # shear beyond 0.3
        [[0, 0, 10, 10], [[6, -1.5]]],  # brightness factor below 0
        [[0, 0, 10, 10], [[10, 3.0]]],  # Posterize below 4 bits
        [[0, 0, 10, 10], [[10, 7.5]]],  # Posterize non-integer bits
        [[0, 0, 10, 10], [[11, -1.0]]],  # Solarize negative
        [[0, 0, 10, 10], [[11, 300.0]]],
        [[0, 0, 10, 10], [[12, 1.0]]],  # AutoContrast takes no magnitude
        [[0, 0, 10, 10], [[5, math.nan]]],
        [[0, 0, 10, 10], [[5, "9"]]],
        [[0, 0, 10, 10], [[5]]],
        [[0, 0, 10, 10], "ops"],
    ],
)
def test_malformed_params_are_rejected(params: object) -> None:
    with pytest.raises(AugParamsError):
        validate_params(params, 80, 60)
    with pytest.raises(AugParamsError):
        replay_aug(_image(), params, 32)


def test_bad_sampling_settings_are_rejected() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        sample_aug_params(rng, 10, 10, **aug_settings(magnitude=31, num_bins=31))
    with pytest.raises(ValueError):
        sample_aug_params(rng, 10, 10, **aug_settings(scale=(0.0, 1.0)))
    with pytest.raises(ValueError):
        sample_aug_params(rng, 0, 10, **aug_settings())
