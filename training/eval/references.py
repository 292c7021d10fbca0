"""What a student's scores are read against: each task's chance level and the teachers.

Chance is the expected score of a model that ranks at random (exact, not simulated):

- classification, C classes: top-1 = mean per-class recall = 1/C, top-k = min(k, C)/C;
- retrieval, N images and T captions, image i owning n_i of them: a caption query finds its
  one image among the k best with probability min(k, N)/N (``image_r{k}``); an image query
  finds any of its n_i captions among k random ones with probability
  1 - C(T - n_i, k) / C(T, k), averaged over images (``text_r{k}``).

The teacher ensemble is scored as the distillation sees it: every member embeds the image and
the text in its own space; the ensemble's similarity is the mean of the members' cosines. Its
embedding is therefore the concatenation of the members' unit embeddings over sqrt(M), whose
dot products are exactly that mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from training.data.benchmark import Task
from training.eval.zeroshot import RECALL_KS
from training.models.open_clip_models import LoadedClip

CHANCE = "chance"
ENSEMBLE = "teacher-ensemble"
STUDENT = "student"


def chance_metrics(task: Task, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """The metrics ``evaluate_task`` reports for ``task``, at their random-ranking expectation."""
    if task.type == "classification":
        c = len(task.classnames)
        return {"top1": 1 / c, "top5": min(5, c) / c, "mean_per_class_recall": 1 / c}
    if task.captions is None:
        raise ValueError(f"task {task.name!r} is a retrieval task without captions")
    n = len(task.captions)
    t = sum(len(c) for c in task.captions)
    out = {f"image_r{k}": min(k, n) / n for k in ks}
    for k in ks:
        k_t = min(k, t)
        # P(no own caption among k of T drawn without replacement) = C(T - n_i, k) / C(T, k).
        misses = [math.comb(t - len(c), k_t) / math.comb(t, k_t) for c in task.captions]
        out[f"text_r{k}"] = 1 - sum(misses) / n
    return out


class TeacherEnsemble:
    """The teacher ensemble as one CLIP-like model for ``training.eval.zeroshot``.

    ``encode_text`` takes the strings themselves (members may tokenise differently); images
    arrive at ``image_size`` (the largest member's) and are resized for smaller members.
    """

    def __init__(self, members: Sequence[LoadedClip]) -> None:
        if not members:
            raise ValueError("a teacher ensemble needs at least one member")
        self.members = list(members)
        self.image_size = max(m.image_size for m in self.members)

    def _scaled(self, embeddings: list[torch.Tensor]) -> torch.Tensor:
        # [B, sum D_m]: unit embeddings side by side / sqrt(M), so a dot product is the mean cosine.
        return torch.cat(embeddings, dim=-1) / math.sqrt(len(self.members))

    @torch.no_grad()
    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [0, 1] (S = ``image_size``) -> [B, sum of member dims], unit norm."""
        out = []
        for member in self.members:
            x = pixels
            if member.image_size != pixels.shape[-1]:
                size = (member.image_size, member.image_size)
                x = F.interpolate(pixels, size=size, mode="bicubic", antialias=True).clamp(0, 1)
            out.append(member.encode_image(x))
        return self._scaled(out)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self._scaled([member.encode_text(texts) for member in self.members])


def pass_strings(texts: list[str]) -> list[str]:
    """The "tokenizer" of models whose ``encode_text`` tokenises itself (open_clip model folders)."""
    return texts
