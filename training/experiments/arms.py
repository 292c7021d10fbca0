"""One arm at one seed: train the student as the arm's config says, scoring it as it goes.

Within a seed every arm starts from the same initial weights and reads the same data order
(both derive from the seed alone, ``training.trainers.student``), so arms differ only in
what their config changes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from clipforge.config import ExperimentArm, StudentModelConfig
from clipforge.progress import Progress, no_progress
from clipforge.stage_api import NullTracker, Tracker
from training.data.benchmark import Task
from training.data.reinforced import ReinforcedDataset, collate
from training.eval.report import aggregate, headline
from training.eval.zeroshot import Tokenizer, evaluate_task
from training.models.checkpoints import initial_student
from training.models.students import StudentClip
from training.trainers.online_teachers import OnlineTeachers
from training.trainers.student import seed_everything, train_student


@dataclass
class ArmRun:
    arm: str
    seed: int
    # One row per evaluation: arm, seed, step, each task's headline score, the aggregates.
    evals: list[dict[str, Any]]
    seconds_per_step: float  # training only, evaluations left out
    final_loss: float


def score(model: StudentClip, tokenizer: Tokenizer, tasks: Sequence[Task], batch_size: int) -> dict[str, float]:
    """Each task's headline score (top-1, or mean R@1) and the aggregates, in eval mode."""
    was_training = model.training
    model.eval()
    kinds = {task.name: task.type for task in tasks}
    metrics: dict[str, float] = {}
    device = next(model.parameters()).device
    with torch.no_grad():
        for task in tasks:
            scores = evaluate_task(model, tokenizer, model.info.image_size, task, batch_size, device)
            metrics.update({f"{task.name}/{key}": value for key, value in scores.items()})
    model.train(was_training)
    return {**{t: headline(metrics, t, k) for t, k in kinds.items()}, **aggregate(metrics, kinds)}


def run_arm(
    arm: ExperimentArm,
    cfg: StudentModelConfig,
    dataset: ReinforcedDataset,
    tasks: Sequence[Task],
    *,
    eval_every: int,
    eval_batch_size: int,
    online_teachers: OnlineTeachers | None = None,
    tracker: Tracker | None = None,
    progress: Progress = no_progress,
) -> ArmRun:
    """Train ``cfg`` (the arm's student config at one seed), scoring every ``eval_every`` steps;
    with ``online_teachers`` (an online arm), they embed every batch in place of the stored
    embeddings."""
    tracker = tracker or NullTracker()
    seed_everything(cfg.seed)
    model = initial_student(cfg)  # what student_model would train: init_checkpoint honoured
    if model.info.image_size != cfg.image_size:
        raise ValueError(
            f"arm {arm.name!r}: {cfg.model!r} takes {model.info.image_size} px, not image_size={cfg.image_size}"
        )
    evals: list[dict[str, Any]] = []
    tokenizer = model.tokenizer()  # built once: open_clip reads its BPE vocabulary each time

    def evaluate(step: int) -> float:
        if step % eval_every and step != cfg.steps:
            return 0.0
        started = time.perf_counter()
        scores = score(model, tokenizer, tasks, eval_batch_size)
        evals.append({"arm": arm.name, "seed": cfg.seed, "step": step, **scores})
        tracker.log_metrics({f"bench_{k}": v for k, v in scores.items()}, step)
        return time.perf_counter() - started

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if (cfg.teacher_embeddings == "online") != (online_teachers is not None):
        raise ValueError(
            f"arm {arm.name!r}: teacher_embeddings={cfg.teacher_embeddings} needs online teachers exactly then"
        )
    result = train_student(
        model,
        dataset,
        cfg,
        list(dataset.meta.teacher_dims),
        list(dataset.meta.logit_scales),
        online_teachers=online_teachers,
        collate=collate,
        tracker=tracker,
        progress=progress,
        device=device,
        after_step=evaluate,
    )
    return ArmRun(arm.name, cfg.seed, evals, result.train_seconds / result.steps, result.final_loss)
