"""Chance levels against random rankings, and the teacher ensemble against its members."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from training.data.benchmark import Task
from training.eval.references import TeacherEnsemble, chance_metrics, pass_strings
from training.eval.zeroshot import classification_metrics, evaluate_task, retrieval_metrics
from training.models.open_clip_models import load_teachers


def _retrieval_task(captions_per_image: list[int]) -> Task:
    captions = [[f"c{i}-{j}" for j in range(n)] for i, n in enumerate(captions_per_image)]
    n = len(captions)
    return Task(
        "r", "retrieval", Path("."), [str(i) for i in range(n)], [Image.new("RGB", (4, 4))] * n, captions=captions
    )


def test_retrieval_chance_matches_random_rankings() -> None:
    # Uneven caption counts: an image owning more captions is easier to hit at random.
    task = _retrieval_task([1, 2, 5, 3, 1, 4])
    text_to_image = torch.tensor([i for i, c in enumerate(task.captions or []) for _ in c])
    gen = torch.Generator().manual_seed(0)
    draws = [
        retrieval_metrics(
            torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=-1),
            torch.nn.functional.normalize(torch.randn(len(text_to_image), 8, generator=gen), dim=-1),
            text_to_image,
        )
        for _ in range(3000)
    ]
    chance = chance_metrics(task)
    for key, expected in chance.items():
        observed = sum(d[key] for d in draws) / len(draws)
        assert observed == pytest.approx(expected, abs=0.02), key
    assert chance["image_r10"] == 1.0 and chance["text_r1"] == pytest.approx(1 / 6)


def test_classification_chance_matches_random_logits() -> None:
    task = Task("c", "classification", Path("."), [], [], labels=[], classnames=list("abcdefg"), templates=["{c}"])
    labels = torch.arange(700) % 7
    draws = [
        classification_metrics(torch.randn(700, 7, generator=torch.Generator().manual_seed(s)), labels)
        for s in range(40)
    ]
    for key, expected in chance_metrics(task).items():
        assert sum(d[key] for d in draws) / len(draws) == pytest.approx(expected, abs=0.01), key


def test_ensemble_similarity_is_the_mean_of_member_cosines(teacher_dir: Path) -> None:
    members = load_teachers(teacher_dir)
    ensemble = TeacherEnsemble(members)
    pixels = torch.rand(3, 3, ensemble.image_size, ensemble.image_size, generator=torch.Generator().manual_seed(1))
    texts = ["a red circle", "two blue stars", "a striped background"]
    sims = ensemble.encode_image(pixels) @ ensemble.encode_text(texts).T
    member_sims = torch.stack([m.encode_image(pixels) @ m.encode_text(texts).T for m in members])
    assert torch.allclose(sims, member_sims.mean(dim=0), atol=1e-6)
    # Members disagree, so the ensemble is neither of them.
    assert not torch.allclose(member_sims[0], member_sims[1], atol=1e-3)


def test_one_member_ensemble_scores_as_that_member(teacher_dir: Path) -> None:
    member = load_teachers(teacher_dir)[0]
    colours = [(230, 20, 20), (20, 230, 20), (20, 20, 230)]
    task = Task(
        "colour",
        "classification",
        Path("."),
        keys=[str(i) for i in range(6)],
        images=[Image.new("RGB", (80, 60), colours[i % 3]) for i in range(6)],
        labels=[i % 3 for i in range(6)],
        classnames=["red", "green", "blue"],
        templates=["a {c} picture.", "a photo of a {c} thing."],
    )
    alone = evaluate_task(member, pass_strings, member.image_size, task, batch_size=4)
    ensemble = TeacherEnsemble([member])
    assert evaluate_task(ensemble, pass_strings, ensemble.image_size, task, batch_size=4) == pytest.approx(alone)
