"""Zero-shot metrics on hand-built embeddings, and the clip_benchmark webdataset reader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.training.benchmark_helpers import COLOURS, solid
from training.eval.zeroshot import (
    class_weights_from_prompt_embeddings,
    classification_metrics,
    evaluate_classification,
    evaluate_retrieval,
    fill_templates,
    pixels_from_pil,
    retrieval_metrics,
)


class ColourModel:
    """A "CLIP" over three colours: an image embeds as its mean RGB, a text as the colour it names.

    ``confuse`` maps an image colour onto another one's embedding (a known mistake).
    """

    def __init__(self, confuse: dict[str, str] | None = None) -> None:
        self.confuse = confuse or {}

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        rgb = pixels.mean(dim=(2, 3))  # [B, 3]
        for src, dst in self.confuse.items():
            index, target = list(COLOURS).index(src), list(COLOURS).index(dst)
            is_src = rgb.argmax(dim=1) == index
            rgb[is_src] = F.one_hot(torch.tensor(target), 3).float()
        return F.normalize(rgb, dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(tokens.float(), dim=-1)

    @staticmethod
    def tokenizer(texts: list[str]) -> torch.Tensor:
        # "token ids": which colour words the text contains, [B, 3]
        return torch.tensor([[float(name in text) for name in COLOURS] for text in texts])


def _classification_task(tmp_path: Path, counts: dict[str, int]):
    from training.data.benchmark import Task

    images = [solid(c) for c, n in counts.items() for _ in range(n)]
    labels = [list(COLOURS).index(c) for c, n in counts.items() for _ in range(n)]
    return Task(
        name="colours",
        type="classification",
        folder=tmp_path,
        keys=[str(i) for i in range(len(images))],
        images=images,
        labels=labels,
        classnames=list(COLOURS),
        templates=["a photo of {c}.", "something {c}"],
    )


def test_classification_metrics_perfect_and_capped_top5() -> None:
    labels = torch.tensor([0, 1, 2, 2])
    logits = F.one_hot(labels, 3).float()
    assert classification_metrics(logits, labels) == {"top1": 1.0, "top5": 1.0, "mean_per_class_recall": 1.0}


def test_classification_metrics_known_confusion() -> None:
    # 4 classes; class 1 always predicted as class 0 (second best is right), class 3 half right.
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])
    logits = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0],
            [0.9, 0.1, 0.0, 0.0],
            [0.9, 0.8, 0.0, 0.0],  # label 1, ranked 2nd
            [0.9, 0.8, 0.0, 0.0],
            [0.0, 0.0, 0.9, 0.1],
            [0.0, 0.0, 0.1, 0.9],
            [0.0, 0.0, 0.1, 0.9],
            [0.0, 0.0, 0.9, 0.1],  # label 3, ranked 2nd
        ]
    )
    out = classification_metrics(logits, labels)
    assert out["top1"] == pytest.approx(5 / 8)
    assert out["top5"] == 1.0  # k capped at 4 classes: every label is somewhere
    assert out["mean_per_class_recall"] == pytest.approx((1 + 0 + 1 + 2 / 3) / 4)


def test_fill_templates_and_weights_average_normalised_embeddings() -> None:
    prompts = fill_templates(["cat", "dog"], ["a {c}.", "a photo of {c} {not a field}"])
    assert prompts == ["a cat.", "a photo of cat {not a field}", "a dog.", "a photo of dog {not a field}"]
    # class 0: two templates of very different norms; the mean is of the *normalised* ones
    prompt_emb = torch.tensor([[10.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 1.0]])
    weights = class_weights_from_prompt_embeddings(prompt_emb, 2)
    assert torch.allclose(weights[0], torch.tensor([1.0, 1.0]) / 2**0.5)
    assert torch.allclose(weights[1], torch.tensor([0.0, 1.0]))


def test_evaluate_classification_perfect_model(tmp_path: Path) -> None:
    task = _classification_task(tmp_path, {"red": 2, "green": 2, "blue": 4})
    out = evaluate_classification(ColourModel(), ColourModel.tokenizer, 8, task, batch_size=3)
    assert out == {"top1": 1.0, "top5": 1.0, "mean_per_class_recall": 1.0}


def test_evaluate_classification_model_confusing_two_classes(tmp_path: Path) -> None:
    task = _classification_task(tmp_path, {"red": 2, "green": 2, "blue": 4})
    out = evaluate_classification(ColourModel({"green": "red"}), ColourModel.tokenizer, 8, task, batch_size=3)
    assert out["top1"] == pytest.approx(6 / 8)  # every green image called red
    assert out["mean_per_class_recall"] == pytest.approx(2 / 3)  # red 1, green 0, blue 1
    assert out["top5"] == 1.0  # k capped at the 3 classes


def test_retrieval_metrics_known_ranks_several_captions() -> None:
    image_emb = torch.eye(4)  # scores are then the caption vectors' entries
    text_emb = torch.tensor(
        [
            [0.9, 0.1, 0.1, 0.0],  # image 0, own rank 1
            [0.5, 0.9, 0.1, 0.0],  # image 0, own rank 2
            [0.1, 0.2, 0.9, 0.5],  # image 1, own rank 3
            [0.0, 0.0, 0.95, 0.1],  # image 2, own rank 1
            [0.8, 0.1, 0.0, 0.6],  # image 3, own rank 2
        ]
    )
    text_to_image = torch.tensor([0, 0, 1, 2, 3])
    out = retrieval_metrics(image_emb, text_emb, text_to_image, ks=(1, 2, 10))
    # caption queries over images
    assert out["image_r1"] == pytest.approx(2 / 5)
    assert out["image_r2"] == pytest.approx(4 / 5)
    assert out["image_r10"] == 1.0  # k capped at 4 images
    # image queries over captions: image 1's only caption ranks 2nd (below caption 1)
    assert out["text_r1"] == pytest.approx(3 / 4)
    assert out["text_r2"] == 1.0
    assert out["text_r10"] == 1.0


def test_retrieval_any_caption_counts_for_image_query() -> None:
    # image 0 has two captions: caption 0 ranks 3rd for it, caption 1 ranks 1st -> still a hit at 1
    image_emb = torch.eye(2)
    text_emb = torch.tensor([[0.1, 0.3], [0.9, 0.0], [0.5, 0.9]])
    out = retrieval_metrics(image_emb, text_emb, torch.tensor([0, 0, 1]), ks=(1,))
    assert out["text_r1"] == 1.0
    assert out["image_r1"] == pytest.approx(2 / 3)  # caption 0 prefers image 1 (0.3 > 0.1)


def test_evaluate_retrieval_perfect_model(tmp_path: Path) -> None:
    from training.data.benchmark import Task

    task = Task(
        name="ret",
        type="retrieval",
        folder=tmp_path,
        keys=["a", "b", "c"],
        images=[solid("red"), solid("green"), solid("blue")],
        captions=[["a red square", "red"], ["green thing"], ["blue", "a blue one", "all blue"]],
    )
    perfect = evaluate_retrieval(ColourModel(), ColourModel.tokenizer, 8, task, batch_size=2)
    assert all(v == 1.0 for v in perfect.values()) and set(perfect) == {
        f"{d}_r{k}" for d in ("image", "text") for k in (1, 5, 10)
    }


def test_pixels_from_pil_resizes_shorter_side_and_centre_crops() -> None:
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 10, 20))  # black left quarter: cropped away
    pixels = pixels_from_pil([image], 16)
    assert pixels.shape == (1, 3, 16, 16)
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert pixels[0, :, :, 1:-1].min() > 0.9  # only white remains inside the crop
