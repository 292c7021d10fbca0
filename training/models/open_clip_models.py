"""Saving and loading open_clip CLIP/CoCa models the pipeline's stages share.

A model folder holds ``model.json`` (what to build and how to feed it) and, for models the
project trained itself, ``weights.pt`` plus the open_clip config under
``open_clip_config/<model_name>.json``. Loading always goes through
``open_clip.create_model(model_name, pretrained=...)``: the same code path loads a real
pretrained tag (``ViT-L-14`` / ``datacomp_xl_s13b_b90k``), a local checkpoint path, or a
checkpoint the pipeline bootstrapped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

import training.models.timm_trunks  # noqa: F401  (registers cf_scene_resnet in timm's registry)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
MODEL_FILE = "model.json"
WEIGHTS_FILE = "weights.pt"
CONFIG_SUBDIR = "open_clip_config"

# clipforge's own small open_clip configs (cf-*) become known to open_clip by name (the timm
# trunks some of them name are registered by importing training.models.timm_trunks, above).
open_clip.add_model_config(MODEL_CONFIG_DIR)


class _DropRandomInitNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


def fresh_model(model_name: str) -> torch.nn.Module:
    """A randomly initialised open_clip model, without open_clip's "initialized randomly" warning.

    open_clip warns on the root logger whenever ``pretrained`` is not given; for a model the
    pipeline means to train from scratch (or only to time) that warning is noise.
    """
    notice_filter = _DropRandomInitNotice()
    root = logging.getLogger()
    root.addFilter(notice_filter)
    try:
        return open_clip.create_model(model_name)
    finally:
        root.removeFilter(notice_filter)


def model_config(model_name: str) -> dict[str, Any]:
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise KeyError(f"open_clip knows no model config named {model_name!r}")
    return cfg


@dataclass
class LoadedClip:
    """An open_clip CLIP or CoCa model in eval mode, with what it needs to be fed."""

    name: str
    model_name: str
    kind: str  # "clip" or "coca"
    model: torch.nn.Module
    tokenizer: Any
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    context_length: int
    embed_dim: int
    # Fixed scale for this model's distillation target (docs/method.md §2.7), not the learned one.
    logit_scale: float
    extra: dict[str, Any] = field(default_factory=dict)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts), context_length=self.context_length)

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] floats in [0, 1] at ``image_size`` -> the model's normalisation."""
        mean = torch.tensor(self.mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
        return (pixels - mean) / std

    def pixels_from_pil(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Inference preprocessing: resize the shorter side (bicubic), centre crop, [0, 1]."""
        import torchvision.transforms.v2.functional as TF

        out = []
        for image in images:
            tensor = TF.to_dtype(TF.to_image(image.convert("RGB")), torch.float32, scale=True)
            tensor = TF.resize(tensor, self.image_size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
            out.append(TF.center_crop(tensor, [self.image_size, self.image_size]).clamp(0, 1))
        return torch.stack(out)

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [0, 1] -> [B, embed_dim], L2-normalised."""
        return F.normalize(self.model.encode_image(self.normalize_pixels(pixels)).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> [B, embed_dim], L2-normalised."""
        device = next(self.model.parameters()).device
        return F.normalize(self.model.encode_text(self.tokenize(texts).to(device)).float(), dim=-1)


def save_model(
    folder: Path,
    *,
    name: str,
    model_name: str,
    model: torch.nn.Module | None,
    kind: str = "clip",
    logit_scale: float,
    pretrained: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a model folder. ``model=None`` records a pretrained reference without weights."""
    folder.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {
        "name": name,
        "model_name": model_name,
        "kind": kind,
        "logit_scale": logit_scale,
        "pretrained": pretrained,
        "weights": None,
        "extra": extra or {},
    }
    if model is not None:
        torch.save(model.state_dict(), folder / WEIGHTS_FILE)
        record["weights"] = WEIGHTS_FILE
        config_dir = folder / CONFIG_SUBDIR
        config_dir.mkdir(exist_ok=True)
        (config_dir / f"{model_name}.json").write_text(json.dumps(model_config(model_name), indent=2))
    (folder / MODEL_FILE).write_text(json.dumps(record, indent=2))
    return folder


def load_model(folder: Path, device: str = "cpu") -> LoadedClip:
    """Build the model a folder describes through open_clip's own loading code."""
    record = json.loads((folder / MODEL_FILE).read_text())
    model_name = record["model_name"]
    if (folder / CONFIG_SUBDIR).is_dir():
        # A checkpoint written elsewhere carries its config; register it under its name.
        open_clip.add_model_config(folder / CONFIG_SUBDIR)
    if record.get("weights"):
        pretrained = str(folder / record["weights"])
    else:
        pretrained = record.get("pretrained")
        if pretrained and not open_clip.list_pretrained_tags_by_model(model_name) and not Path(pretrained).exists():
            raise FileNotFoundError(f"{folder}: pretrained {pretrained!r} is neither a known tag nor a file")
    model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
    return as_loaded_clip(
        model,
        model_name,
        name=record["name"],
        kind=record.get("kind", "clip"),
        logit_scale=float(record["logit_scale"]),
        extra=record.get("extra", {}),
    )


def model_image_size(model_name: str) -> int:
    """The square input side an open_clip config is built for (224 when it does not say)."""
    size = model_config(model_name)["vision_cfg"].get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def as_loaded_clip(
    model: torch.nn.Module,
    model_name: str,
    *,
    name: str,
    kind: str,
    logit_scale: float,
    extra: dict[str, Any] | None = None,
) -> LoadedClip:
    """An open_clip model built from config ``model_name``, in eval mode, with what feeds it."""
    model.eval()
    cfg = model_config(model_name)
    preprocess = getattr(model.visual, "preprocess_cfg", {}) or {}
    return LoadedClip(
        name=name,
        model_name=model_name,
        kind=kind,
        model=model,
        tokenizer=open_clip.get_tokenizer(model_name),
        image_size=model_image_size(model_name),
        mean=tuple(preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(preprocess.get("std", open_clip.OPENAI_DATASET_STD)),
        context_length=int(cfg["text_cfg"].get("context_length", 77)),
        embed_dim=int(cfg["embed_dim"]),
        logit_scale=logit_scale,
        extra=extra or {},
    )


# The model stages' layouts: teacher_models lists its ensemble in TEACHERS_FILE; captioner_model
# keeps its CoCa in the CAPTIONER_DIR folder.
TEACHERS_FILE = "teachers.json"
CAPTIONER_DIR = "captioner"


def save_ensemble_index(folder: Path, names: Sequence[str]) -> None:
    """``teacher_models`` output: teachers.json lists the member folders, in order."""
    (folder / TEACHERS_FILE).write_text(json.dumps({"teachers": list(names)}, indent=2))


def load_teachers(folder: Path, device: str = "cpu") -> list[LoadedClip]:
    """Load the teacher ensemble a ``teacher_models`` folder holds, in ensemble order."""
    index = json.loads((folder / TEACHERS_FILE).read_text())
    if not index.get("teachers"):
        raise ValueError(f"{folder / TEACHERS_FILE} lists no teachers")
    return [load_model(folder / name, device=device) for name in index["teachers"]]
