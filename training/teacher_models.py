"""Stage ``teacher_models``: the CLIP teacher ensemble, resolved from pretrained specs or bootstrapped.

- ``pretrained`` mode records each open_clip spec (model name + pretrained tag or local
  checkpoint path) as a model folder and proves it loads; nothing is trained.
- ``bootstrap`` mode trains two small CLIP teachers of different architectures (a ViT and an
  timm ResNet-10-T image tower inside open_clip) on the embedded clean teacher corpus, standing in for the
  web-scale data real teachers saw (``training.trainers.clip_teacher``). A held-out part of
  the corpus checks that each learned the scenes: image->text and text->image top-1
  retrieval, measured on the saved folder reloaded through ``load_model``.
"""

from __future__ import annotations

import logging

import pandas as pd

from clipforge.config import Params
from clipforge.gates import Suite
from clipforge.stage_api import StageContext, StageOutcome
from training.data.teacher_corpus import HOLDOUT_FRACTION, holdout_split, load_teacher_corpus, split_summary
from training.eval.heldout import heldout_retrieval
from training.models.model_folders import manifest_row, model_folder_suite
from training.models.open_clip_models import load_model, save_ensemble_index, save_model
from training.models.pretrained import check_names, resolve_pretrained
from training.optim import scale_multiplier
from training.trainers.clip_teacher import train_clip
from training.trainers.plots import HISTORY_FILE, LOSS_CURVE, plot_history

log = logging.getLogger(__name__)

# Bootstrapped ensemble: (folder name, open_clip config). Two architectures, so the ensemble
# carries more than either member (docs/method.md §2.5): on the embedded benchmark the ViT
# binds colours to objects better, the batch-normalised CNN learns textures within a few
# hundred steps (open_clip's ModifiedResNet, measured in its place, learned neither).
BOOTSTRAP_TEACHERS: tuple[tuple[str, str], ...] = (
    ("vit-teacher", "cf-tiny-vit-teacher"),
    ("rn-teacher", "cf-tiny-resnet10t-teacher"),
)


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
    rows, histories, metrics = [], {}, {}
    for name, model_name in BOOTSTRAP_TEACHERS:
        result = train_clip(model_name, corpus, train_idx, boot, label=name, tracker=ctx.tracker, progress=ctx.progress)
        scale = float(scale_multiplier(result.model.logit_scale.detach()))
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
    pd.concat(histories.values(), ignore_index=True).to_parquet(out / HISTORY_FILE, index=False)
    plot_history(histories, out / LOSS_CURVE, "bootstrapped CLIP teachers")
    return StageOutcome(
        manifest=pd.DataFrame(rows),
        summary={
            "mode": "bootstrap",
            **split_summary(corpus, train_idx, held_idx),
            "teachers": [name for name, _ in BOOTSTRAP_TEACHERS],
        },
        metrics=metrics,
        previews={"loss_curve": LOSS_CURVE},
    )
