"""Student variants behind one registry: ``build_student(name)``, saved and loaded by folder.

Every student is a :class:`StudentClip`: image pixels in [0, 1] go in (the variant's own
mean/std normalisation happens inside, so exports take plain 1/255-scaled pixels), tokens
go in, L2-normalised embeddings come out. The registry holds clipforge's open_clip ``tiny-vit``
and every MobileCLIP variant of ``training.models.mobileclip``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import PatchDropout
from torch import nn

from training.models.masking import mask_pixel_patches
from training.models.open_clip_models import fresh_model  # importing it registers clipforge's cf-* configs
from training.optim import scale_multiplier

STUDENT_FILE = "student.json"
# A stage that publishes a student (student_model, reparameterized_model) keeps its folder here.
STAGE_MODEL_DIR = "model"
WEIGHTS_FILE = "weights.pt"
TOWERS = ("image", "text")  # a student's two encoders, in the order reports list them


@dataclass(frozen=True)
class StudentInfo:
    variant: str
    image_size: int
    context_length: int
    embed_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tokenizer: str  # open_clip tokenizer name (get_tokenizer argument)


class StudentClip(nn.Module):
    """A CLIP student: ``encode_image`` / ``encode_text`` give normalised embeddings."""

    def __init__(self, clip: nn.Module, info: StudentInfo) -> None:
        super().__init__()
        self.clip = clip
        self.info = info
        self.register_buffer("pixel_mean", torch.tensor(info.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(info.std).view(1, 3, 1, 1), persistent=False)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [0, 1] -> [B, D], L2-normalised."""
        return F.normalize(self.clip.encode_image((pixels - self.pixel_mean) / self.pixel_std), dim=-1)

    def encode_image_masked(
        self, pixels: torch.Tensor, ratio: float, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The embedding of a view with ``ratio`` of its patches hidden (CLIP-KD's MFD), [B, D].

        An open_clip ViT tower drops that share of its patch tokens (MAE-style, through its
        own ``PatchDropout`` slot); any other tower sees pixel patches filled with the mean.
        """
        visual = self.clip.visual
        if isinstance(getattr(visual, "patch_dropout", None), nn.Module):
            saved = visual.patch_dropout
            # A fresh module is in training mode, so it masks even when the tower is in eval.
            visual.patch_dropout = PatchDropout(ratio)
            try:
                return self.encode_image(pixels)
            finally:
                visual.patch_dropout = saved
        return self.encode_image(mask_pixel_patches(pixels, ratio, self.pixel_mean, generator=generator))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, context_length] int token ids -> [B, D], L2-normalised."""
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # The learnable temperature is capped (docs/method.md §2.7).
        return self.encode_image(pixels), self.encode_text(tokens), scale_multiplier(self.clip.logit_scale)

    def tokenizer(self) -> Callable[[list[str]], torch.Tensor]:
        tok = open_clip.get_tokenizer(self.info.tokenizer)
        return lambda texts: tok(list(texts), context_length=self.info.context_length)


def open_clip_student(variant: str, model_name: str) -> StudentClip:
    """Any open_clip config (``ViT-B-16``, clipforge's ``cf-*``) as a freshly initialised student."""
    clip = fresh_model(model_name)
    cfg = open_clip.get_model_config(model_name)
    pre = clip.visual.preprocess_cfg
    info = StudentInfo(
        variant=variant,
        image_size=int(cfg["vision_cfg"]["image_size"]),
        context_length=int(cfg["text_cfg"].get("context_length", 77)),
        embed_dim=int(cfg["embed_dim"]),
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
        tokenizer=model_name,
    )
    return StudentClip(clip, info)


def _mobileclip_student(variant: str) -> StudentClip:
    from training.models.mobileclip import build_mobileclip, variant_config

    cfg = variant_config(variant)
    info = StudentInfo(
        variant=variant,
        image_size=cfg.image_size,
        context_length=cfg.context_length,
        embed_dim=cfg.embed_dim,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        tokenizer=cfg.tokenizer,
    )
    return StudentClip(build_mobileclip(variant), info)


def _registry() -> dict[str, Callable[[], StudentClip]]:
    from training.models.mobileclip import list_variants

    registry: dict[str, Callable[[], StudentClip]] = {
        "tiny-vit": lambda: open_clip_student("tiny-vit", "cf-tiny-vit-student"),
    }
    for name in list_variants():
        registry[name] = lambda name=name: _mobileclip_student(name)
    return registry


# name -> builder. A builder returns a freshly initialised student: clipforge's open_clip
# tiny-vit and every MobileCLIP variant (training/models/mobileclip), MobileCLIP-nano for CPU runs.
STUDENT_REGISTRY: dict[str, Callable[[], StudentClip]] = _registry()


def build_student(name: str) -> StudentClip:
    if name not in STUDENT_REGISTRY:
        raise KeyError(f"unknown student variant {name!r}; known: {sorted(STUDENT_REGISTRY)}")
    return STUDENT_REGISTRY[name]()


def tower_params(clip: nn.Module) -> tuple[int, int]:
    """(image, text) parameter counts of a CLIP (open_clip's or ``MobileClip``, e.g. ``student.clip``):
    the ``visual`` tower, then the rest but the shared logit scale."""
    image = sum(p.numel() for p in clip.visual.parameters())
    text = sum(p.numel() for p in clip.parameters()) - image - clip.logit_scale.numel()
    return image, text


def save_student(model: StudentClip, folder: Path, *, reparameterized: bool = False) -> None:
    """Write ``student.json`` + ``weights.pt``; ``reparameterized=True`` marks folded weights."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / WEIGHTS_FILE)
    record = asdict(model.info)
    if reparameterized:
        # Folded weights only load into a folded module tree (see load_student).
        record["reparameterized"] = True
    (folder / STUDENT_FILE).write_text(json.dumps(record, indent=2))


def is_folded_student(folder: Path) -> bool:
    """Whether ``folder`` holds a student saved with ``reparameterized=True``."""
    record = folder / STUDENT_FILE
    return record.is_file() and bool(json.loads(record.read_text()).get("reparameterized", False))


def load_student(folder: Path) -> StudentClip:
    info = json.loads((folder / STUDENT_FILE).read_text())
    model = build_student(info["variant"])
    if info.get("reparameterized", False):
        # Rebuild the inference-time structure: fold the fresh model (eval mode, the same walk
        # export.reparameterize performs) so the folded state dict's keys and shapes match.
        from timm.utils import reparameterize_model

        model = reparameterize_model(model.eval(), inplace=True)
    state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
