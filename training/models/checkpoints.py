"""MobileCLIP students to and from open_clip's and Apple's checkpoint layouts.

Three layouts are read: clipforge's own (``StudentClip.state_dict()``, keys ``clip.*``, as in a
student folder's ``weights.pt``), open_clip's (``visual.trunk.*``, ``text.transformer.*``: what
``open_clip.create_model(name, pretrained=path)`` loads) and Apple's ml-mobileclip
(``image_encoder.model.*``, ``text_encoder.*``: ``mobileclip_s0.pt`` ...). Two are written: the
open_clip layout for variants open_clip has a config for (MobileCLIP-S1/S2/B, MobileCLIP2-*;
not S0, whose MCt text tower open_clip lacks, nor nano) and Apple's layout for every variant.
Both written layouts are train form: fold after loading, as Apple's and open_clip's code does.

It sits beside the student registry (``training.models.students``), not inside
``training.models.mobileclip``, which knows nothing of students: the key maps it uses are
``mobileclip.open_clip_layout`` and ``mobileclip.apple_layout``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import open_clip
import torch

from clipforge.config import StudentModelConfig
from training.models.mobileclip.apple_layout import IMAGE_PREFIX, TEXT_PREFIX, from_apple, to_apple
from training.models.mobileclip.model import MobileClip
from training.models.mobileclip.open_clip_layout import from_open_clip, to_open_clip
from training.models.mobileclip.variants import build_mobileclip, variant_config
from training.models.students import STUDENT_REGISTRY, StudentClip, build_student, is_folded_student, load_student

Layout = Literal["clipforge", "open_clip", "apple"]
_CLIP = "clip."  # StudentClip's prefix in front of MobileClip's keys
_SHOWN = 8  # keys listed per kind in an error message


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not fit the requested student variant."""


def _mobileclip_of(student: StudentClip) -> MobileClip:
    if not isinstance(student.clip, MobileClip):
        raise TypeError(f"{student.info.variant!r} is not a MobileCLIP student; only those have these layouts")
    return student.clip


def _train_form_state(clip: MobileClip) -> dict[str, torch.Tensor]:
    state = clip.state_dict()
    folded = [key for key in state if ".reparam_conv." in key]
    if folded:
        raise ValueError(
            f"the student is folded ({len(folded)} reparam_conv tensors, e.g. {folded[0]}); open_clip and Apple "
            "checkpoints hold train-form weights: export the student before reparameterizing it"
        )
    return state


def _structure(variant: str) -> MobileClip:
    """A weightless model of the variant: the layout maps read module types and stage shapes."""
    with torch.device("meta"):
        return build_mobileclip(variant)


def open_clip_model_name(variant: str) -> str:
    """open_clip's model name for a clipforge variant; ValueError where open_clip has no config."""
    name = variant_config(variant).name
    if open_clip.get_model_config(name) is None:
        raise ValueError(
            f"open_clip {open_clip.__version__} has no model config named {name!r} (it ships MobileCLIP-S1/S2/B and "
            "MobileCLIP2-*; S0's MCt text tower is not in open_clip): write Apple's layout instead"
        )
    return name


def to_open_clip_state_dict(student: StudentClip) -> dict[str, torch.Tensor]:
    """The state dict ``open_clip.create_model(open_clip_model_name(variant))`` loads strictly."""
    open_clip_model_name(student.info.variant)
    clip = _mobileclip_of(student)
    return to_open_clip(_train_form_state(clip), clip)


def to_apple_state_dict(student: StudentClip) -> dict[str, torch.Tensor]:
    """The state dict of Apple's ``mobileclip.clip.CLIP`` for this variant (train form)."""
    clip = _mobileclip_of(student)
    return to_apple(_train_form_state(clip), clip)


def export_open_clip_checkpoint(student: StudentClip, path: Path) -> Path:
    """Write ``to_open_clip_state_dict`` as a torch file (``.pt`` / ``.bin``) for open_clip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(to_open_clip_state_dict(student), path)
    return path


def export_apple_checkpoint(student: StudentClip, path: Path) -> Path:
    """Write ``to_apple_state_dict`` as a torch file, as Apple's ``mobileclip_*.pt`` are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(to_apple_state_dict(student), path)
    return path


def _student_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``MobileClip`` keys -> ``StudentClip`` keys; keys outside its namespace (ones a layout map
    could not place) keep their checkpoint names, so errors show them as written."""
    return {
        (_CLIP + key if key == "logit_scale" or key.startswith(("visual.", "text.")) else key): value
        for key, value in state.items()
    }


def from_open_clip_state_dict(variant: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip keys -> the variant's ``StudentClip`` keys (no loading, no key check yet)."""
    return _student_keys(from_open_clip(state, _structure(variant)))


def from_apple_state_dict(variant: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apple's keys -> the variant's ``StudentClip`` keys (no loading, no key check yet)."""
    return _student_keys(from_apple(state, _structure(variant)))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, unwrapped from ``{"state_dict": ...}`` or ``{"model": ...}``
    and stripped of DistributedDataParallel's ``module.`` prefix. Loads tensors only
    (``weights_only``), so a checkpoint that pickles other objects is refused by torch."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        loaded: Any = load_file(path, device="cpu")
    else:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, Mapping) or not loaded:
        raise ValueError(f"{path} holds no state dict (got {type(loaded).__name__})")
    if all(key.startswith("module.") for key in loaded):
        loaded = {key.removeprefix("module."): value for key, value in loaded.items()}
    return dict(loaded)


def detect_layout(state: Mapping[str, torch.Tensor]) -> Layout:
    """Which layout a state dict is in, from its key names."""
    keys = list(state)
    if any(key.startswith(_CLIP) for key in keys):
        return "clipforge"
    if any(key.startswith(IMAGE_PREFIX) for key in keys) and any(key.startswith(TEXT_PREFIX) for key in keys):
        return "apple"
    if any(key.startswith("visual.trunk.") for key in keys) and "text.text_projection" in state:
        return "open_clip"
    raise ValueError(
        f"unrecognised checkpoint layout (first keys: {keys[:5]}); expected clipforge's (clip.*), open_clip's "
        "(visual.trunk.*, text.text_projection) or Apple's (image_encoder.model.*, text_encoder.*)"
    )


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_state_strict(student: StudentClip, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` (``StudentClip`` keys) into ``student``; every key and shape must match.

    Raises CheckpointMismatchError naming the missing, unexpected and wrongly shaped keys, in
    clipforge's names (keys a layout map could not place keep their checkpoint names).
    """
    expected = student.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key} (checkpoint {tuple(state[key].shape)}, model {tuple(expected[key].shape)})"
        for key in sorted(set(state) & set(expected))
        if state[key].shape != expected[key].shape
    ]
    problems = [
        f"{len(keys)} {kind}: {_listed(keys)}"
        for kind, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape))
        if keys
    ]
    if problems:
        hint = " (a checkpoint of another variant?)" if wrong_shape else ""
        folded = (
            " (folded weights: load the reparameterized student's folder)"
            if any(".reparam_conv." in key for key in unexpected)
            else ""
        )
        raise CheckpointMismatchError(
            f"{source} does not fit {student.info.variant}{hint}{folded}: " + "; ".join(problems)
        )
    student.load_state_dict(state, strict=True)


def _student_name(variant: str) -> str:
    """The registry name of a variant, resolving MobileCLIP aliases such as ``S0``."""
    return variant if variant in STUDENT_REGISTRY else variant_config(variant).name


def load_pretrained_student(variant: str, path: Path | str) -> StudentClip:
    """A student of ``variant`` with weights from ``path``, in eval mode.

    ``path`` is a student folder (``save_student``) or a checkpoint file in clipforge's,
    open_clip's or Apple's layout (detected from its keys; ``.pt``/``.bin``/``.pth`` or
    ``.safetensors``). Every tensor must find its place: anything else raises
    CheckpointMismatchError naming the keys.
    """
    path = Path(path)
    name = _student_name(variant)
    if path.is_dir():
        student = load_student(path)
        if student.info.variant != name:
            raise CheckpointMismatchError(f"{path} holds a {student.info.variant} student, not {name}")
        return student
    state = read_state_dict(path)
    layout = detect_layout(state)
    if layout == "open_clip":
        state = from_open_clip_state_dict(name, state)
    elif layout == "apple":
        state = from_apple_state_dict(name, state)
    student = build_student(name)
    load_state_strict(student, state, f"{path} ({layout} layout)")
    return student.eval()


def initial_student(cfg: StudentModelConfig) -> StudentClip:
    """A fresh ``cfg.model`` student, or one holding ``cfg.init_checkpoint``'s weights."""
    if cfg.init_checkpoint is None:
        return build_student(cfg.model)
    if is_folded_student(Path(cfg.init_checkpoint)):
        # Folded blocks have lost their train-time branches: training them is not the recipe.
        raise ValueError(
            f"student_model.init_checkpoint={cfg.init_checkpoint!r} is a reparameterized (folded) student; "
            "start from the unfolded student_model folder instead"
        )
    return load_pretrained_student(cfg.model, cfg.init_checkpoint)
