"""Stage ``captioner_model``: the CoCa captioner, resolved from a pretrained spec or bootstrapped.

``bootstrap`` mode trains a small open_clip CoCa on the embedded clean teacher corpus
(``training.trainers.coca_captioner``: caption + contrastive terms), then checks it on held-out
samples: retrieval, and word overlap of captions sampled by the same sampler the
``synthetic_captions`` stage uses.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from PIL import Image

from clipforge.config import Params
from clipforge.gates import Suite
from clipforge.stage_api import StageContext, StageOutcome
from training.data.teacher_corpus import HOLDOUT_FRACTION, holdout_split, load_teacher_corpus, split_summary
from training.eval.heldout import caption_attribute_accuracy, heldout_retrieval, names_main_object, unigram_f1
from training.models import coca_sampling
from training.models.model_folders import manifest_row, model_folder_suite
from training.models.open_clip_models import CAPTIONER_DIR, load_model, save_model
from training.models.pretrained import resolve_pretrained
from training.optim import scale_multiplier
from training.trainers.coca_captioner import train_coca
from training.trainers.plots import HISTORY_FILE, LOSS_CURVE, plot_history

BOOTSTRAP_CAPTIONER = "cf-tiny-coca"
NUM_EXAMPLE_CAPTIONS = 8


def quality_suite(params: Params) -> Suite:
    return model_folder_suite()


def run(ctx: StageContext) -> StageOutcome:
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
    corpus = load_teacher_corpus(ctx.inputs["embedded_corpus"], boot.image_size, ctx.progress)
    train_idx, held_idx = holdout_split(len(corpus), HOLDOUT_FRACTION, boot.seed)
    result, vocab = train_coca(
        BOOTSTRAP_CAPTIONER,
        corpus,
        train_idx,
        boot,
        cfg.facts,
        cfg.facts_weight,
        tracker=ctx.tracker,
        progress=ctx.progress,
    )
    scale = float(scale_multiplier(result.model.logit_scale.detach()))
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
        top_p=cfg.heldout_top_p,
        max_length=loaded.context_length - 1,
        seeds=list(range(len(held_images))),
    )
    caption_seconds = time.perf_counter() - started
    refs = [corpus.captions[i] for i in held_idx.tolist()]
    f1 = float(np.mean([unigram_f1(s[0], r) for s, r in zip(sampled, refs, strict=True)]))
    # Against the generator's ground truth, where the corpus carries it (KEY.json).
    truths = [corpus.attributes[i] if corpus.attributes else None for i in held_idx.tolist()]
    known = [(s[0], t) for s, t in zip(sampled, truths, strict=True) if names_main_object(t)]
    accuracy = caption_attribute_accuracy(*zip(*known, strict=True)) if known else {}
    facts = {
        "final_loss": result.final_loss,
        "final_caption_loss": float(result.history["caption_loss"].tail(10).mean()),
        "final_contrastive_loss": float(result.history["contrastive_loss"].tail(10).mean()),
        "train_seconds": result.seconds,
        **check,
        "heldout_caption_unigram_f1": f1,
        **{f"heldout_{k}": v for k, v in accuracy.items()},
        "logit_scale": scale,
    }
    hist = result.history.assign(model=CAPTIONER_DIR)
    hist.to_parquet(ctx.out_dir / HISTORY_FILE, index=False)
    plot_history({CAPTIONER_DIR: hist}, ctx.out_dir / LOSS_CURVE, "bootstrapped CoCa captioner")
    examples = [
        {"reference": r, "generated": s[0]} for s, r in list(zip(sampled, refs, strict=True))[:NUM_EXAMPLE_CAPTIONS]
    ]
    return StageOutcome(
        manifest=pd.DataFrame([manifest_row(CAPTIONER_DIR, loaded, mode="bootstrap", **facts)]),
        summary={
            "mode": "bootstrap",
            **split_summary(corpus, train_idx, held_idx),
            "trained_vocab": len(vocab.ids),
            "heldout_captions_per_second": len(held_images) / max(caption_seconds, 1e-9),
            "examples": examples,
        },
        metrics={f"captioner_{k}": float(v) for k, v in facts.items()},
        previews={"loss_curve": LOSS_CURVE},
    )
