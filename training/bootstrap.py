"""Stages ``teacher_models`` and ``captioner_model``: resolve pretrained models or bootstrap them.

- ``pretrained`` mode records each open_clip spec (model name + pretrained tag or local
  checkpoint path) as a model folder and proves it loads; nothing is trained.
- ``bootstrap`` mode trains small models on the embedded clean teacher corpus, standing in
  for the web-scale data real teachers saw (DESIGN.md "The embedded default"): two CLIP
  teachers of different architectures (a ViT and an open_clip ModifiedResNet) with open_clip's
  ``ClipLoss``, and a small CoCa with ``CoCaLoss`` (caption + contrastive terms).

The corpus is small, so it is decoded into memory once ([N, 3, S, S] uint8) and batches are
cropped there with one batched ``roi_align`` (random resized crop, no flip); no DataLoader.
About 5% of the corpus is held out to check that each model learned the scenes: image->text
and text->image top-1 retrieval among the held-out samples, measured on the saved folder
reloaded through ``load_model``.

The CoCa's caption loss is computed over the corpus vocabulary only: projection columns of
tokens the corpus never uses are zeroed at the start and never trained, so each has logit
exactly 0 and they enter the softmax as one lumped term ``log(count)``. That is the exact
full-vocabulary cross-entropy of the saved model at a fraction of the cost (the full
49408-way projection of every position costs ~16 s per step on two CPU cores), and
``training.models.coca_sampling`` exploits the same zero columns when it samples.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import open_clip
import pandas as pd
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, CoCaLoss
from PIL import Image
from torch import nn

from clipforge.config import BootstrapTrainConfig, OpenClipSpec
from clipforge.stage_api import StageContext, StageOutcome, Tracker
from training.data.tar_shards import iter_tar_samples
from training.models import coca_sampling
from training.models.open_clip_models import (
    LoadedClip,
    fresh_model,
    load_model,
    model_config,
    save_ensemble_index,
    save_model,
)
from training.optim import cosine_lr, set_lr

log = logging.getLogger(__name__)
T = TypeVar("T")
ProgressFn = Callable[[Iterable[T], str, int | None], Iterator[T]]

TEACHER_CORPUS_SHARDS = "teacher_corpus/shards"
# Bootstrapped ensemble: (folder name, open_clip config). Two architectures, so the ensemble
# carries more than either member (METHOD.md 2.5).
BOOTSTRAP_TEACHERS: tuple[tuple[str, str], ...] = (
    ("vit-teacher", "cf-tiny-vit-teacher"),
    ("rn-teacher", "cf-tiny-rn-teacher"),
)
BOOTSTRAP_CAPTIONER = "cf-tiny-coca"
CAPTIONER_DIR = "captioner"
HOLDOUT_FRACTION = 0.05
# The corpus is stored at this multiple of the training resolution, so crops at scale 0.5
# still have source pixels to resample from.
STORE_FACTOR = 1.5
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
MAX_LOGIT_SCALE = 100.0
# open_clip's CoCa defaults (--coca-caption-loss-weight 2, --coca-contrastive-loss-weight 1).
COCA_CAPTION_WEIGHT = 2.0
COCA_CONTRASTIVE_WEIGHT = 1.0
LOG_EVERY = 10
NUM_EXAMPLE_CAPTIONS = 8


# ---------------------------------------------------------------- corpus


@dataclass
class Corpus:
    """The teacher corpus decoded into memory."""

    images: torch.Tensor  # [N, 3, S, S] uint8, shorter side resized to S then centre-cropped
    captions: list[str]
    keys: list[str]
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> samples dropped

    def __len__(self) -> int:
        return len(self.captions)


def _square_uint8(image: Image.Image, side: int) -> torch.Tensor:
    """PIL image -> [3, side, side] uint8: shorter side resized to ``side``, centre crop."""
    image = image.convert("RGB")
    scale = side / min(image.size)
    size = (max(side, round(image.width * scale)), max(side, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - side) // 2, (size[1] - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def read_corpus(shard_dir: Path, side: int, progress: ProgressFn | None = None) -> Corpus:
    """Decode every ``KEY.jpg`` + ``KEY.txt`` sample of ``shard_dir/*.tar`` into memory.

    Samples without an image or caption, with an empty caption or an undecodable image are
    skipped and counted by reason; an empty corpus is an error.
    """
    shards = sorted(Path(shard_dir).glob("*.tar"))
    if not shards:
        raise FileNotFoundError(f"no teacher corpus shards (*.tar) in {shard_dir}")
    images: list[torch.Tensor] = []
    captions: list[str] = []
    keys: list[str] = []
    skipped: Counter[str] = Counter()
    iterator: Iterable[Path] = shards if progress is None else progress(shards, "decode corpus", len(shards))
    for shard in iterator:
        for key, members in iter_tar_samples(shard):
            image_bytes = members.get("jpg") or members.get("png") or members.get("jpeg") or members.get("webp")
            if image_bytes is None or "txt" not in members:
                skipped["missing image or caption"] += 1
                continue
            caption = members["txt"].decode("utf-8", errors="replace").strip()
            if not caption:
                skipped["empty caption"] += 1
                continue
            try:
                with Image.open(io.BytesIO(image_bytes)) as img:
                    images.append(_square_uint8(img, side))
            except (OSError, ValueError, Image.DecompressionBombError):
                skipped["undecodable image"] += 1
                continue
            captions.append(caption)
            keys.append(key)
    if not images:
        raise ValueError(f"teacher corpus {shard_dir} holds no usable sample (skipped: {dict(skipped)})")
    return Corpus(torch.stack(images), captions, keys, skipped)


def holdout_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, held-out indices): a seeded ``fraction`` (at least 2, at most n // 2) held out."""
    held = min(max(2, round(n * fraction)), n // 2)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[held:].sort().values, perm[:held].sort().values


# ---------------------------------------------------------------- augmentation


def random_resized_crop(
    images: torch.Tensor,
    out_size: int,
    generator: torch.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> torch.Tensor:
    """Batched RandomResizedCrop (no flip): [B, 3, S, S] uint8 -> [B, 3, out, out] float in [0, 1].

    Per sample: area fraction ~ U(scale), log aspect ~ U(log ratio), box clipped to the
    image, position uniform. Every crop is resampled bilinearly by one ``roi_align`` call
    (2x2 samples per output pixel, which also smooths mild downscaling).
    """
    from torchvision.ops import roi_align

    b, _, h, w = images.shape
    area = torch.empty(b).uniform_(*scale, generator=generator) * (h * w)
    log_r = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_r.exp()
    cw = (area * aspect).sqrt().clamp(1, w)
    ch = (area / aspect).sqrt().clamp(1, h)
    x0 = torch.rand(b, generator=generator) * (w - cw)
    y0 = torch.rand(b, generator=generator) * (h - ch)
    boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], dim=1)  # [B, 5]
    pixels = images.float() / 255.0
    return roi_align(pixels, boxes, output_size=(out_size, out_size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


def resize_full(images: torch.Tensor, out_size: int) -> torch.Tensor:
    """The whole image, as inference sees it: [B, 3, S, S] uint8 -> [B, 3, out, out] float in [0, 1]."""
    pixels = images.float() / 255.0
    if images.shape[-1] == out_size:
        return pixels
    return F.interpolate(pixels, size=(out_size, out_size), mode="bicubic", antialias=True).clamp(0, 1)


def pixel_norm(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's mean/std as [1, 3, 1, 1] tensors (the values ``load_model`` will use)."""
    pre = getattr(model.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(pre.get("mean", open_clip.OPENAI_DATASET_MEAN), dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(pre.get("std", open_clip.OPENAI_DATASET_STD), dtype=torch.float32).view(1, 3, 1, 1)
    return mean, std


# ---------------------------------------------------------------- training


@dataclass
class TrainResult:
    model: nn.Module
    history: pd.DataFrame  # one row per step: step, lr, loss, logit_scale, (parts)
    seconds: float

    @property
    def final_loss(self) -> float:
        # Mean of the last few steps: one batch's loss is noisy.
        tail = self.history["loss"].tail(max(1, min(10, len(self.history) // 10)))
        return float(tail.mean())


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # open_clip's rule: no decay for gains, biases, norms and the temperature.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _batches(indices: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled epochs over ``indices``, full batches only (a short corpus repeats)."""
    batch_size = min(batch_size, len(indices))
    while True:
        perm = indices[torch.randperm(len(indices), generator=generator)]
        for start in range(0, len(perm) - batch_size + 1, batch_size):
            yield perm[start : start + batch_size]


StepLoss = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def train_loop(
    model: nn.Module,
    step_loss: StepLoss,
    corpus: Corpus,
    tokens: torch.Tensor,
    train_idx: torch.Tensor,
    cfg: BootstrapTrainConfig,
    *,
    label: str,
    tracker: Tracker | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """AdamW + warmup/cosine over random resized crops; ``step_loss(pixels, tokens)`` -> (loss, parts).

    pixels are [B, 3, image_size, image_size] normalised for the model, tokens [B, L].
    """
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    mean, std = pixel_norm(model)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    batches = _batches(train_idx, cfg.batch_size, gen)
    steps: Iterable[int] = range(cfg.steps)
    if progress is not None:
        steps = progress(steps, f"train {label}", cfg.steps)
    rows: list[dict[str, float]] = []
    model.train()
    for step in steps:
        lr = cosine_lr(step, cfg.steps, cfg.warmup_steps, cfg.lr)
        set_lr(optimizer, lr)
        idx = next(batches)
        pixels = (random_resized_crop(corpus.images[idx], cfg.image_size, gen) - mean) / std
        loss, parts = step_loss(pixels, tokens[idx])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{label}: loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            # open_clip clamps the learned temperature the same way (METHOD.md 2.7 cap).
            model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
        row = {
            "step": step,
            "lr": lr,
            "loss": float(loss.detach()),
            "logit_scale": float(model.logit_scale.detach().exp()),
            **parts,
        }
        rows.append(row)
        if tracker is not None and (step % LOG_EVERY == 0 or step == cfg.steps - 1):
            tracker.log_metrics({f"{label}_{k}": v for k, v in row.items() if k != "step"}, step=step)
    model.eval()
    return TrainResult(model, pd.DataFrame(rows), time.perf_counter() - started)


def _check_image_size(model_name: str, cfg: BootstrapTrainConfig) -> None:
    size = model_config(model_name)["vision_cfg"].get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    if int(size) != cfg.image_size:
        raise ValueError(
            f"bootstrap.image_size={cfg.image_size} but open_clip config {model_name!r} is built for "
            f"{size}x{size} images; change one of them so they agree"
        )


def _tokenize(model_name: str, captions: Sequence[str]) -> torch.Tensor:
    return open_clip.get_tokenizer(model_name)(list(captions))


def train_clip(
    model_name: str,
    corpus: Corpus,
    train_idx: torch.Tensor,
    cfg: BootstrapTrainConfig,
    *,
    label: str,
    tracker: Tracker | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train an open_clip CLIP from scratch with ``ClipLoss``."""
    _check_image_size(model_name, cfg)
    torch.manual_seed(cfg.seed)
    model = fresh_model(model_name)
    tokens = _tokenize(model_name, corpus.captions)
    loss_fn = ClipLoss()

    def step_loss(pixels: torch.Tensor, toks: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        image_features, text_features, scale = model(pixels, toks)[:3]
        return loss_fn(image_features, text_features, scale), {}

    return train_loop(model, step_loss, corpus, tokens, train_idx, cfg, label=label, tracker=tracker, progress=progress)


@dataclass
class CaptionVocab:
    """The vocabulary the caption loss computes explicitly; every other token is lumped.

    Column 0 of the restricted logits is the lump (all zero-projection tokens, logit 0 each,
    so ``log(count)`` together); it doubles as the ignored label of padding positions.
    """

    ids: torch.Tensor  # [C] vocabulary ids with a trained projection column
    column: torch.Tensor  # [V] vocabulary id -> column (1..C), 0 for lumped/padding
    vocab_size: int

    @classmethod
    def from_tokens(cls, tokens: torch.Tensor, vocab_size: int, pad_id: int = 0) -> CaptionVocab:
        ids = torch.unique(tokens)
        ids = ids[ids != pad_id]
        column = torch.zeros(vocab_size, dtype=torch.long)
        column[ids] = torch.arange(1, len(ids) + 1)
        return cls(ids, column, vocab_size)

    @property
    def num_lumped(self) -> int:
        return self.vocab_size - len(self.ids)

    def restricted_logits(self, hidden: torch.Tensor, projection: torch.Tensor) -> torch.Tensor:
        """hidden [B, L, W], projection [W, V] -> [B, L, 1 + C]: the lump, then the explicit columns."""
        explicit = hidden @ projection[:, self.ids]
        lump = torch.full_like(explicit[..., :1], math.log(self.num_lumped))
        return torch.cat([lump, explicit], dim=-1)


def coca_losses(
    model: nn.Module, pixels: torch.Tensor, tokens: torch.Tensor, vocab: CaptionVocab, loss_fn: CoCaLoss
) -> tuple[torch.Tensor, torch.Tensor]:
    """(contrastive, caption) losses of open_clip's ``CoCaLoss`` with the lumped vocabulary.

    Same teacher forcing as ``CoCa.forward``: the decoder reads tokens[:, :-1] and predicts
    tokens[:, 1:]; padding labels map to column 0, ``CoCaLoss``'s ignore index.
    """
    image_latent, image_embs = model._encode_image(pixels)
    text_latent, token_embs = model._encode_text(tokens)
    hidden = coca_sampling.decoder_hidden(model.text_decoder, image_embs, token_embs[:, :-1])
    logits = vocab.restricted_logits(hidden, model.text_decoder.text_projection)
    labels = vocab.column[tokens[:, 1:]]
    return loss_fn(image_latent, text_latent, logits, labels, model.logit_scale.exp())


def train_coca(
    model_name: str,
    corpus: Corpus,
    train_idx: torch.Tensor,
    cfg: BootstrapTrainConfig,
    *,
    label: str = "captioner",
    tracker: Tracker | None = None,
    progress: ProgressFn | None = None,
) -> tuple[TrainResult, CaptionVocab]:
    """Train an open_clip CoCa from scratch with ``CoCaLoss`` (caption + contrastive terms)."""
    _check_image_size(model_name, cfg)
    torch.manual_seed(cfg.seed)
    model = fresh_model(model_name)
    coca_sampling.check_coca(model)
    tokens = _tokenize(model_name, corpus.captions)
    projection = model.text_decoder.text_projection
    vocab = CaptionVocab.from_tokens(tokens, projection.shape[1], pad_id=int(getattr(model, "pad_id", 0)))
    with torch.no_grad():
        # open_clip leaves the decoder's projection as torch.empty (its init_parameters is
        # never called): initialise the trained columns like the text tower's projection.
        # Untrained columns are exactly zero from here on (no gradient reaches them and
        # decoupled weight decay keeps zero at zero): each such token has logit 0.
        keep = torch.zeros(projection.shape[1], dtype=torch.bool)
        keep[vocab.ids] = True
        projection.normal_(0.0, projection.shape[0] ** -0.5)
        projection[:, ~keep] = 0.0
    loss_fn = CoCaLoss(caption_loss_weight=COCA_CAPTION_WEIGHT, clip_loss_weight=COCA_CONTRASTIVE_WEIGHT)

    def step_loss(pixels: torch.Tensor, toks: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        contrastive, caption = coca_losses(model, pixels, toks, vocab, loss_fn)
        return contrastive + caption, {
            "contrastive_loss": float(contrastive.detach()),
            "caption_loss": float(caption.detach()),
        }

    result = train_loop(
        model, step_loss, corpus, tokens, train_idx, cfg, label=label, tracker=tracker, progress=progress
    )
    return result, vocab


# ---------------------------------------------------------------- evaluation


def retrieval_top1(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: Sequence[str]) -> tuple[float, float]:
    """(image->text, text->image) top-1 among N pairs; [N, D] normalised embeddings each.

    A retrieved caption counts as right when its text equals the true caption, so duplicate
    captions in the held-out set are not counted as misses.
    """
    sims = image_emb @ text_emb.T  # [N images, N texts]
    caps = np.asarray(captions, dtype=object)
    i2t = float(np.mean(caps[sims.argmax(dim=1).numpy()] == caps))
    t2i = float(np.mean(caps[sims.argmax(dim=0).numpy()] == caps))
    return i2t, t2i


def heldout_retrieval(loaded: LoadedClip, corpus: Corpus, held_idx: torch.Tensor) -> dict[str, float]:
    """Held-out retrieval through a reloaded model folder (the path downstream stages use)."""
    pixels = resize_full(corpus.images[held_idx], loaded.image_size)
    captions = [corpus.captions[i] for i in held_idx.tolist()]
    image_emb = torch.cat([loaded.encode_image(chunk) for chunk in pixels.split(256)])
    text_emb = torch.cat([loaded.encode_text(captions[i : i + 256]) for i in range(0, len(captions), 256)])
    i2t, t2i = retrieval_top1(image_emb, text_emb, captions)
    return {"heldout_i2t_top1": i2t, "heldout_t2i_top1": t2i, "heldout_size": float(len(captions))}


def unigram_f1(candidate: str, reference: str) -> float:
    """Word-overlap F1 (multiset) between a generated and a reference caption."""
    cand, ref = Counter(candidate.lower().split()), Counter(reference.lower().split())
    overlap = sum((cand & ref).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(cand.values()), overlap / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------- outputs


def count_params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def manifest_row(folder_name: str, loaded: LoadedClip, **extra: Any) -> dict[str, Any]:
    return {
        "name": folder_name,
        "model_name": loaded.model_name,
        "kind": loaded.kind,
        "num_params": count_params(loaded.model),
        "embed_dim": loaded.embed_dim,
        "image_size": loaded.image_size,
        **extra,
    }


def plot_history(histories: dict[str, pd.DataFrame], path: Path, title: str) -> Path:
    """Loss curves (total loss, and the CoCa's parts when present) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for label, hist in histories.items():
        ax.plot(hist["step"], hist["loss"], label=f"{label} loss")
        for part in ("contrastive_loss", "caption_loss"):
            if part in hist:
                ax.plot(hist["step"], hist[part], label=f"{label} {part.replace('_', ' ')}", alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _corpus_for(ctx: StageContext, cfg: BootstrapTrainConfig) -> Corpus:
    if "embedded_corpus" not in ctx.inputs:
        raise KeyError(f"stage {ctx.name} in bootstrap mode needs the embedded_corpus input")
    shard_dir = ctx.inputs["embedded_corpus"] / TEACHER_CORPUS_SHARDS
    return read_corpus(shard_dir, round(cfg.image_size * STORE_FACTOR), progress=ctx.progress)


# ---------------------------------------------------------------- pretrained mode


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


def _check_names(names: Sequence[str]) -> None:
    duplicates = [n for n, c in Counter(names).items() if c > 1]
    if duplicates:
        raise ValueError(f"model names must be unique, repeated: {duplicates}")
    bad = [n for n in names if not n or "/" in n or n.startswith(".")]
    if bad:
        raise ValueError(f"model names become folder names; not usable: {bad}")


# ---------------------------------------------------------------- stages


def run_teachers(ctx: StageContext) -> StageOutcome:
    """Stage ``teacher_models``: the CLIP teacher ensemble (pretrained specs or bootstrapped)."""
    cfg = ctx.params.teacher_models
    out = ctx.out_dir
    if cfg.mode == "pretrained":
        _check_names([s.name for s in cfg.teachers])
        rows = []
        for spec in ctx.progress(cfg.teachers, "resolve teachers", len(cfg.teachers)):
            loaded = resolve_pretrained(spec, out / spec.name, kind="clip")
            rows.append(manifest_row(spec.name, loaded, mode="pretrained", logit_scale=spec.logit_scale))
        save_ensemble_index(out, [s.name for s in cfg.teachers])
        return StageOutcome(
            manifest=pd.DataFrame(rows),
            summary={"mode": "pretrained", "teachers": [s.model_dump() for s in cfg.teachers]},
        )

    boot = cfg.bootstrap
    corpus = _corpus_for(ctx, boot)
    train_idx, held_idx = holdout_split(len(corpus), HOLDOUT_FRACTION, boot.seed)
    rows, histories, metrics = [], {}, {}
    for name, model_name in BOOTSTRAP_TEACHERS:
        result = train_clip(model_name, corpus, train_idx, boot, label=name, tracker=ctx.tracker, progress=ctx.progress)
        scale = float(result.model.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE))
        save_model(
            out / name,
            name=name,
            model_name=model_name,
            model=result.model,
            kind="clip",
            logit_scale=scale,
            extra={"bootstrap": boot.model_dump(), "train_samples": len(train_idx)},
        )
        loaded = load_model(out / name)
        check = heldout_retrieval(loaded, corpus, held_idx)
        hist = result.history.assign(model=name)
        histories[name] = hist
        facts = {"final_loss": result.final_loss, "train_seconds": result.seconds, **check, "logit_scale": scale}
        metrics.update({f"{name}_{k}": float(v) for k, v in facts.items()})
        rows.append(manifest_row(name, loaded, mode="bootstrap", **facts))
        log.info("teacher %s: %s", name, facts)
    save_ensemble_index(out, [name for name, _ in BOOTSTRAP_TEACHERS])
    pd.concat(histories.values(), ignore_index=True).to_parquet(out / "history.parquet", index=False)
    plot_history(histories, out / "previews" / "loss_curve.png", "bootstrapped CLIP teachers")
    return StageOutcome(
        manifest=pd.DataFrame(rows),
        summary={
            "mode": "bootstrap",
            "corpus_samples": len(corpus),
            "train_samples": len(train_idx),
            "heldout_samples": len(held_idx),
            "random_top1": 1.0 / len(held_idx),
            "skipped": dict(corpus.skipped),
            "teachers": [name for name, _ in BOOTSTRAP_TEACHERS],
        },
        metrics=metrics,
        previews={"loss_curve": "previews/loss_curve.png"},
    )


def run_captioner(ctx: StageContext) -> StageOutcome:
    """Stage ``captioner_model``: the CoCa captioner (a pretrained spec or bootstrapped)."""
    cfg = ctx.params.captioner_model
    folder = ctx.out_dir / CAPTIONER_DIR
    if cfg.mode == "pretrained":
        assert cfg.captioner is not None  # the config validator guarantees it
        loaded = resolve_pretrained(cfg.captioner, folder, kind="coca")
        row = manifest_row(CAPTIONER_DIR, loaded, mode="pretrained", spec_name=cfg.captioner.name)
        return StageOutcome(
            manifest=pd.DataFrame([row]), summary={"mode": "pretrained", "captioner": cfg.captioner.model_dump()}
        )

    boot = cfg.bootstrap
    corpus = _corpus_for(ctx, boot)
    train_idx, held_idx = holdout_split(len(corpus), HOLDOUT_FRACTION, boot.seed)
    result, vocab = train_coca(BOOTSTRAP_CAPTIONER, corpus, train_idx, boot, tracker=ctx.tracker, progress=ctx.progress)
    scale = float(result.model.logit_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE))
    save_model(
        folder,
        name=CAPTIONER_DIR,
        model_name=BOOTSTRAP_CAPTIONER,
        model=result.model,
        kind="coca",
        logit_scale=scale,
        extra={"bootstrap": boot.model_dump(), "train_samples": len(train_idx), "trained_vocab": len(vocab.ids)},
    )
    loaded = load_model(folder)
    check = heldout_retrieval(loaded, corpus, held_idx)
    # Captions of held-out images by the sampler the synthetic_captions stage uses.
    held_images = [Image.fromarray(corpus.images[i].permute(1, 2, 0).numpy()) for i in held_idx.tolist()]
    started = time.perf_counter()
    sampled = coca_sampling.generate_captions(
        loaded,
        held_images,
        num_captions=1,
        top_p=0.9,
        max_length=loaded.context_length - 1,
        seeds=list(range(len(held_images))),
    )
    caption_seconds = time.perf_counter() - started
    refs = [corpus.captions[i] for i in held_idx.tolist()]
    f1 = float(np.mean([unigram_f1(s[0], r) for s, r in zip(sampled, refs, strict=True)]))
    facts = {
        "final_loss": result.final_loss,
        "final_caption_loss": float(result.history["caption_loss"].tail(10).mean()),
        "final_contrastive_loss": float(result.history["contrastive_loss"].tail(10).mean()),
        "train_seconds": result.seconds,
        **check,
        "heldout_caption_unigram_f1": f1,
        "logit_scale": scale,
    }
    hist = result.history.assign(model=CAPTIONER_DIR)
    hist.to_parquet(ctx.out_dir / "history.parquet", index=False)
    plot_history({CAPTIONER_DIR: hist}, ctx.out_dir / "previews" / "loss_curve.png", "bootstrapped CoCa captioner")
    examples = [
        {"reference": r, "generated": s[0]} for s, r in list(zip(sampled, refs, strict=True))[:NUM_EXAMPLE_CAPTIONS]
    ]
    return StageOutcome(
        manifest=pd.DataFrame([manifest_row(CAPTIONER_DIR, loaded, mode="bootstrap", **facts)]),
        summary={
            "mode": "bootstrap",
            "corpus_samples": len(corpus),
            "train_samples": len(train_idx),
            "heldout_samples": len(held_idx),
            "random_top1": 1.0 / len(held_idx),
            "trained_vocab": len(vocab.ids),
            "heldout_captions_per_second": len(held_images) / max(caption_seconds, 1e-9),
            "skipped": dict(corpus.skipped),
            "examples": examples,
        },
        metrics={f"captioner_{k}": float(v) for k, v in facts.items()},
        previews={"loss_curve": "previews/loss_curve.png"},
    )
