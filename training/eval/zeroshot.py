"""Zero-shot classification and retrieval with clip_benchmark's semantics (docs/method.md §2.10).

Classification: a class's weight is the normalised mean of the normalised text embeddings
of every template filled with the class name; logits are image embeddings times weights;
top-1, top-5 (k capped at the number of classes) and mean per-class recall.

Retrieval, named as clip_benchmark names it:
- ``image_r{k}`` (image retrieval): each caption is a query over all images; correct at k when
  its own image is among the k best;
- ``text_r{k}`` (text retrieval): each image is a query over all captions; correct at k when
  any of its captions is among the k best.

Any model works that offers ``encode_image(pixels [B, 3, S, S] in [0, 1]) -> [B, D]`` and
``encode_text(tokens) -> [B, D]``, with a tokenizer ``list[str] -> tokens`` and an image size
(``training.models.students.StudentClip`` gives ``.info.image_size`` and ``.tokenizer()``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

from clipforge.progress import Progress, no_progress
from training.data.benchmark import PLACEHOLDER, Task

# Whatever the model's ``encode_text`` takes: token ids, or the strings themselves for models
# that tokenise inside (open_clip model folders, the teacher ensemble).
Tokenizer = Callable[[list[str]], Any]
RECALL_KS = (1, 5, 10)


class ClipLike(Protocol):
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, tokens: Any) -> torch.Tensor: ...


def pixels_from_pil(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Inference preprocessing: shorter side to ``size`` (bicubic), centre crop -> [B, 3, S, S] in [0, 1]."""
    out = []
    for image in images:
        tensor = TF.to_dtype(TF.to_image(image.convert("RGB")), torch.float32, scale=True)
        tensor = TF.resize(tensor, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        # Bicubic overshoots; clamp back to the [0, 1] range the models expect.
        out.append(TF.center_crop(tensor, [size, size]).clamp(0, 1))
    return torch.stack(out)


def _batches(n: int, batch_size: int) -> range:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return range(0, n, batch_size)


@torch.no_grad()
def encode_images(
    model: ClipLike,
    images: Sequence[Image.Image],
    image_size: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    progress: Progress = no_progress,
    desc: str = "images",
) -> torch.Tensor:
    """PIL images -> [N, D] float32 L2-normalised embeddings, on the CPU."""
    starts = _batches(len(images), batch_size)
    chunks = []
    for start in progress(starts, desc, len(starts)):
        pixels = pixels_from_pil(images[start : start + batch_size], image_size).to(device)
        chunks.append(F.normalize(model.encode_image(pixels).float(), dim=-1).cpu())
    return torch.cat(chunks)


@torch.no_grad()
def encode_texts(
    model: ClipLike,
    tokenizer: Tokenizer,
    texts: Sequence[str],
    batch_size: int,
    device: str | torch.device = "cpu",
    progress: Progress = no_progress,
    desc: str = "texts",
) -> torch.Tensor:
    """Strings -> [N, D] float32 L2-normalised embeddings, on the CPU."""
    starts = _batches(len(texts), batch_size)
    chunks = []
    for start in progress(starts, desc, len(starts)):
        tokens = tokenizer(list(texts[start : start + batch_size]))
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.to(device)
        chunks.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    return torch.cat(chunks)


def fill_templates(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Class-major prompts: [c0 t0, c0 t1, ..., c1 t0, ...] (len C * T)."""
    # str.replace, not str.format: templates may hold other braces.
    return [template.replace(PLACEHOLDER, name) for name in classnames for template in templates]


def class_weights_from_prompt_embeddings(prompt_emb: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C * T, D] class-major prompt embeddings -> [C, D]: normalised mean of normalised embeddings."""
    per_class = F.normalize(prompt_emb, dim=-1).view(num_classes, -1, prompt_emb.shape[-1])
    return F.normalize(per_class.mean(dim=1), dim=-1)


def zeroshot_weights(
    model: ClipLike,
    tokenizer: Tokenizer,
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int,
    device: str | torch.device = "cpu",
    progress: Progress = no_progress,
) -> torch.Tensor:
    """The zero-shot classifier, [C, D]."""
    prompts = fill_templates(classnames, templates)
    prompt_emb = encode_texts(model, tokenizer, prompts, batch_size, device, progress, desc="class prompts")
    return class_weights_from_prompt_embeddings(prompt_emb, len(classnames))


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """logits [N, C], labels [N] -> top1, top5 (k <= C) and mean per-class recall.

    Mean per-class recall averages top-1 recall over the classes that occur in ``labels``
    (as sklearn's balanced accuracy does, which clip_benchmark uses).
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ValueError(
            f"need logits [N, C] and labels [N] with N > 0, got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    labels = labels.long()
    k5 = min(5, logits.shape[1])
    topk = logits.topk(k5, dim=1).indices  # [N, k5], best first
    hits = topk.eq(labels.unsqueeze(1))  # [N, k5]
    top1_hit = hits[:, 0].float()
    present = labels.unique()
    recalls = torch.stack([top1_hit[labels == c].mean() for c in present])
    return {
        "top1": top1_hit.mean().item(),
        "top5": hits.any(dim=1).float().mean().item(),
        "mean_per_class_recall": recalls.mean().item(),
    }


def _hit_at_k(scores: torch.Tensor, positives: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """scores, positives [Q, M]: fraction of queries with a positive among their k best."""
    k_max = min(max(ks), scores.shape[1])
    top = scores.topk(k_max, dim=1).indices  # [Q, k_max]
    hit_rank = positives.gather(1, top)  # [Q, k_max] bool: is the r-th best a positive
    return {k: hit_rank[:, : min(k, k_max)].any(dim=1).float().mean().item() for k in ks}


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    """image_emb [N, D], text_emb [T, D], text_to_image [T] (image index of each caption).

    Returns ``image_r{k}`` (caption queries finding their image) and ``text_r{k}`` (image
    queries finding any of their captions); k is capped at the number of candidates.
    """
    n_images, n_texts = image_emb.shape[0], text_emb.shape[0]
    if text_to_image.shape != (n_texts,) or n_images == 0 or n_texts == 0:
        raise ValueError("need N > 0 images, T > 0 texts and text_to_image of shape [T]")
    if text_to_image.min() < 0 or text_to_image.max() >= n_images:
        raise ValueError("text_to_image holds an index outside [0, N)")
    scores = text_emb @ image_emb.T  # [T, N]
    positives = torch.zeros(n_texts, n_images, dtype=torch.bool)
    positives[torch.arange(n_texts), text_to_image.long()] = True
    image_hits = _hit_at_k(scores, positives, ks)
    text_hits = _hit_at_k(scores.T, positives.T, ks)
    return {
        **{f"image_r{k}": v for k, v in image_hits.items()},
        **{f"text_r{k}": v for k, v in text_hits.items()},
    }


def evaluate_classification(
    model: ClipLike,
    tokenizer: Tokenizer,
    image_size: int,
    task: Task,
    batch_size: int,
    device: str | torch.device = "cpu",
    progress: Progress = no_progress,
) -> dict[str, float]:
    if task.labels is None:
        raise ValueError(f"task {task.name!r} is not a classification task")
    weights = zeroshot_weights(model, tokenizer, task.classnames, task.templates, batch_size, device, progress)
    image_emb = encode_images(model, task.images, image_size, batch_size, device, progress)
    return classification_metrics(image_emb @ weights.T, torch.tensor(task.labels))


def evaluate_retrieval(
    model: ClipLike,
    tokenizer: Tokenizer,
    image_size: int,
    task: Task,
    batch_size: int,
    device: str | torch.device = "cpu",
    progress: Progress = no_progress,
    ks: Sequence[int] = RECALL_KS,
) -> dict[str, float]:
    if task.captions is None:
        raise ValueError(f"task {task.name!r} is not a retrieval task")
    texts = [caption for captions in task.captions for caption in captions]
    text_to_image = torch.tensor([i for i, captions in enumerate(task.captions) for _ in captions])
    image_emb = encode_images(model, task.images, image_size, batch_size, device, progress)
    text_emb = encode_texts(model, tokenizer, texts, batch_size, device, progress, desc="captions")
    return retrieval_metrics(image_emb, text_emb, text_to_image, ks)


def evaluate_task(
    model: ClipLike,
    tokenizer: Tokenizer,
    image_size: int,
    task: Task,
    batch_size: int,
    device: str | torch.device = "cpu",
    progress: Progress = no_progress,
) -> dict[str, float]:
    """Metrics of one task, keyed without the task prefix (``top1``, ``image_r1``, ...)."""
    if task.type == "classification":
        return evaluate_classification(model, tokenizer, image_size, task, batch_size, device, progress)
    return evaluate_retrieval(model, tokenizer, image_size, task, batch_size, device, progress)
