"""Stage ``teacher_models``: the CLIP teacher ensemble, resolved from pretrained specs or bootstrapped.

- ``pretrained`` mode records each open_clip spec (model name + pretrained tag or local
  checkpoint path) as a model folder and proves it loads; nothing is trained.
- ``bootstrap`` mode trains two small CLIP teachers (timm ResNet image towers inside open_clip,
  two seeds) on the embedded clean teacher corpus, standing in for the web-scale data real
  teachers saw (``training.trainers.clip_teacher``): with ``image_pretraining.steps`` > 0 the
  image trunk first learns the scene facts and is then locked while the text tower is tuned
  (LiT), else both towers train contrastively from scratch. The two train at once, one
  thread each (two cores do ~1.4x the work of one process using both on these small models).
  A held-out part of the corpus checks that each learned the scenes: image->text and
  text->image top-1 retrieval, measured on the saved folder reloaded through ``load_model``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pandas as pd
import torch

from clipforge.config import Params
from clipforge.gates import Suite
from clipforge.stage_api import StageContext, StageOutcome
from training.data.teacher_corpus import HOLDOUT_FRACTION, holdout_split, load_teacher_corpus, split_summary
from training.eval.heldout import heldout_retrieval
from training.models.model_folders import manifest_row, model_folder_suite
from training.models.open_clip_models import load_model, save_ensemble_index, save_model
from training.models.pretrained import check_names, resolve_pretrained
from training.optim import scale_multiplier
from training.trainers.clip_teacher import train_clip, train_lit
from training.trainers.corpus_loop import CorpusTrainResult, log_history
from training.trainers.plots import HISTORY_FILE, LOSS_CURVE, plot_history

# <teacher>_pretrain_history.parquet: a LiT teacher's image-trunk phase, one row per step.
PRETRAIN_HISTORY_SUFFIX = "pretrain_history.parquet"

log = logging.getLogger(__name__)

# Bootstrapped ensemble: (folder name, open_clip config, seed offset). One architecture, two
# seeds (a deep ensemble): with LiT the image trunk must learn the object's shape from pixels
# in the stage's budget, which the 1.2M-parameter cf_scene_resnet (training/models/
# timm_trunks.py) does at ~0.14 s/step (one core, bf16), where the ViT teacher (~7x slower per
# step) and resnet10t (~3x) reach less in the same time on the validation split.
BOOTSTRAP_TEACHERS: tuple[tuple[str, str, int], ...] = (
    ("rn-teacher-0", "cf-tiny-cnn-teacher", 0),
    ("rn-teacher-1", "cf-tiny-cnn-teacher", 1),
)


@contextmanager
def _threads_per_worker(workers: int) -> Iterator[None]:
    """Split torch's intra-op threads among ``workers`` trainers running at once (a process-wide setting)."""
    total = torch.get_num_threads()
    torch.set_num_threads(max(1, total // workers))
    try:
        yield
    finally:
        torch.set_num_threads(total)


def quality_suite(params: Params) -> Suite:
    return model_folder_suite()


def run(ctx: StageContext) -> StageOutcome:
    cfg = ctx.params.teacher_models
    out = ctx.out_dir
    if cfg.mode == "pretrained":
        check_names([s.name for s in cfg.teachers])
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
    corpus = load_teacher_corpus(ctx.inputs["embedded_corpus"], boot.image_size, ctx.progress)
    train_idx, held_idx = holdout_split(len(corpus), HOLDOUT_FRACTION, boot.seed)

    def train(member: tuple[str, str, int]) -> CorpusTrainResult:
        name, model_name, offset = member
        seeded = boot.model_copy(update={"seed": boot.seed + offset})
        # No tracker in the worker threads: MLflow's active run is thread-local; the histories
        # are logged below, by the stage's thread.
        if cfg.image_pretraining.steps > 0:
            return train_lit(
                model_name, corpus, train_idx, seeded, cfg.image_pretraining, label=name, progress=ctx.progress
            )
        return train_clip(model_name, corpus, train_idx, seeded, label=name, progress=ctx.progress)

    workers = min(len(BOOTSTRAP_TEACHERS), torch.get_num_threads())
    with _threads_per_worker(workers), ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(train, BOOTSTRAP_TEACHERS))

    rows, histories, metrics = [], {}, {}
    for (name, model_name, offset), result in zip(BOOTSTRAP_TEACHERS, results, strict=True):
        log_history(ctx.tracker, name, result.history.to_dict("records"), boot.log_every, boot.steps)
        pretrain_facts: dict[str, float] = {}
        pretrain = result.pretrain_history
        if pretrain is not None and len(pretrain):
            pretrain.to_parquet(out / f"{name}_{PRETRAIN_HISTORY_SUFFIX}", index=False)
            log_history(
                ctx.tracker,
                f"{name}_pretrain",
                pretrain.to_dict("records"),
                boot.log_every,
                cfg.image_pretraining.steps,
            )
            # Mean of the last tenth: the per-batch figure is noisy.
            tail = pretrain["facts_accuracy"].tail(max(1, len(pretrain) // 10))
            pretrain_facts["pretrain_facts_accuracy"] = float(tail.mean())
        scale = float(scale_multiplier(result.model.logit_scale.detach()))
        save_model(
            out / name,
            name=name,
            model_name=model_name,
            model=result.model,
            kind="clip",
            logit_scale=scale,
            extra={
                "bootstrap": {**boot.model_dump(), "seed": boot.seed + offset},
                "image_pretraining": cfg.image_pretraining.model_dump(),
                "train_samples": len(train_idx),
            },
        )
        loaded = load_model(out / name)
        check = heldout_retrieval(loaded, corpus, held_idx)
        histories[name] = result.history.assign(model=name)
        facts = {
            "final_loss": result.final_loss,
            "train_seconds": result.seconds,
            **check,
            "logit_scale": scale,
            **pretrain_facts,
        }
        metrics.update({f"{name}_{k}": float(v) for k, v in facts.items()})
        rows.append(manifest_row(name, loaded, mode="bootstrap", **facts))
        log.info("teacher %s: %s", name, facts)
    save_ensemble_index(out, [name for name, _, _ in BOOTSTRAP_TEACHERS])
    pd.concat(histories.values(), ignore_index=True).to_parquet(out / HISTORY_FILE, index=False)
    plot_history(histories, out / LOSS_CURVE, "bootstrapped CLIP teachers")
    return StageOutcome(
        manifest=pd.DataFrame(rows),
        summary={
            "mode": "bootstrap",
            **split_summary(corpus, train_idx, held_idx),
            "teachers": [name for name, _, _ in BOOTSTRAP_TEACHERS],
            "recipe": "lit" if cfg.image_pretraining.steps > 0 else "clip",
        },
        metrics=metrics,
        previews={"loss_curve": LOSS_CURVE},
    )
