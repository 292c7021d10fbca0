"""Pretrained open_clip models named by a spec (model name + pretrained tag or checkpoint path)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import open_clip

from clipforge.config import OpenClipSpec
from training.models import coca_sampling
from training.models.open_clip_models import LoadedClip, load_model, save_model


def resolve_pretrained(spec: OpenClipSpec, folder: Path, kind: str) -> LoadedClip:
    """Record ``spec`` as a model folder without weights and prove it loads (no training).

    ``spec.pretrained`` is an open_clip tag of ``spec.model`` or a local checkpoint path; a
    path is stored absolute so later stages find it from any working directory.
    """
    if open_clip.get_model_config(spec.model) is None:
        raise KeyError(f"{spec.name}: open_clip knows no model named {spec.model!r}")
    if not spec.pretrained:
        raise ValueError(f"{spec.name}: pretrained mode needs a pretrained tag or checkpoint path for {spec.model!r}")
    tags = open_clip.list_pretrained_tags_by_model(spec.model)
    pretrained = spec.pretrained
    if pretrained not in tags:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{spec.name}: pretrained {pretrained!r} is neither a checkpoint file nor a known tag of "
                f"{spec.model!r} (known tags: {', '.join(tags) or 'none'})"
            )
        pretrained = str(path.resolve())
    save_model(
        folder,
        name=spec.name,
        model_name=spec.model,
        model=None,
        kind=kind,
        logit_scale=spec.logit_scale,
        pretrained=pretrained,
    )
    try:
        loaded = load_model(folder)
    except Exception as err:  # open_clip raises RuntimeError/OSError/KeyError from many places
        hint = (
            " Without network access, download the checkpoint elsewhere and give its local path as `pretrained`."
            if pretrained in tags
            else ""
        )
        raise RuntimeError(
            f"{spec.name}: cannot load open_clip {spec.model!r} with {pretrained!r}: {err}.{hint}"
        ) from err
    if kind == "coca":
        coca_sampling.check_coca(loaded.model)
    return loaded


def check_names(names: Sequence[str]) -> None:
    duplicates = [n for n, c in Counter(names).items() if c > 1]
    if duplicates:
        raise ValueError(f"model names must be unique, repeated: {duplicates}")
    bad = [n for n in names if not n or "/" in n or n.startswith(".")]
    if bad:
        raise ValueError(f"model names become folder names; not usable: {bad}")
