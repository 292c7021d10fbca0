"""Stage ``student_model``: train a student with the MobileCLIP loss from stored teacher embeddings.

Input: the ``reinforced_dataset`` folder (DataCompDR shards + ``dr_meta.json``), read by
``training.data.reinforced``; the loop is ``training.trainers.student``. No teacher runs here
(docs/method.md §1). Outputs per docs/stages.md.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import torch

from clipforge.config import Params, StudentModelConfig
from clipforge.files import path_sha256
from clipforge.gates.rules import SHA256, Suite, finite, positive, regex, single_value
from clipforge.stage_api import MANIFEST_FILE, StageContext, StageOutcome
from training.data.reinforced import ReinforcedDataset, collate
from training.models.checkpoints import initial_student
from training.models.students import STAGE_MODEL_DIR, StudentClip, save_student
from training.trainers.checkpointing import CheckpointStore
from training.trainers.plots import HISTORY_FILE, LOSS_CURVE, save_loss_curve
from training.trainers.student import StudentTrainResult, seed_everything, train_student

CHECKPOINT_FILE = "checkpoint.pt"


def quality_suite(params: Params) -> Suite:
    return Suite(
        required=("artifact", "bytes", "sha256", "final_loss"),
        unique=(("artifact",),),
        rules=(
            positive("bytes"),
            regex("sha256", SHA256, "sha256 is 64 lowercase hex chars"),
            finite("final_loss"),
            single_value("final_loss"),
        ),
    )


def artifact_manifest(out_dir: Path, final_loss: float) -> pd.DataFrame:
    """One row per file the stage wrote: artifact (relative path), bytes, sha256, final_loss."""
    rows = [
        {
            "artifact": path.relative_to(out_dir).as_posix(),
            "bytes": path.stat().st_size,
            "sha256": path_sha256(path),
            "final_loss": final_loss,
        }
        for path in sorted(out_dir.rglob("*"))
        if path.is_file()
    ]
    return pd.DataFrame(rows, columns=["artifact", "bytes", "sha256", "final_loss"])


def save_outputs(model: StudentClip, result: StudentTrainResult, cfg: StudentModelConfig, out_dir: Path) -> None:
    """model/, history.parquet, checkpoint.pt, previews/loss_curve.png under ``out_dir``."""
    model = model.cpu().eval()
    save_student(model, out_dir / STAGE_MODEL_DIR)
    result.history.to_parquet(out_dir / HISTORY_FILE, index=False)
    torch.save(result.final_state, out_dir / CHECKPOINT_FILE)
    save_loss_curve(result.history, out_dir / LOSS_CURVE)


# Keys that change how a run is watched or stored, not what it trains: a rerun that changes
# only these still resumes.
_NOT_TRAINING = ("log_every", "num_workers", "checkpoint_every", "keep_checkpoints", "checkpoint_dir")


def run_fingerprint(cfg: StudentModelConfig, reinforced_dataset: Path) -> str:
    """What a run trains, hashed: the training keys, the input data's manifest, the init weights.

    Resumable checkpoints are kept under this name, so only the same training resumes them.
    """
    facts = {
        "student_model": {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_TRAINING},
        "reinforced_dataset": path_sha256(reinforced_dataset / MANIFEST_FILE),
        "init_checkpoint": None if cfg.init_checkpoint is None else path_sha256(Path(cfg.init_checkpoint)),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def run(ctx: StageContext) -> StageOutcome:
    cfg = ctx.params.student_model
    folder = ctx.inputs["reinforced_dataset"]
    checkpoints = CheckpointStore(
        Path(cfg.checkpoint_dir) / ctx.name / run_fingerprint(cfg, folder), cfg.keep_checkpoints
    )
    seed_everything(cfg.seed)
    model = initial_student(cfg)
    if model.info.image_size != cfg.image_size:
        raise ValueError(
            f"student_model.image_size={cfg.image_size} but variant {cfg.model!r} takes {model.info.image_size} px"
        )
    dataset = ReinforcedDataset.from_stage_dir(folder, model.tokenizer(), cfg.image_size, cfg.seed)
    meta = dataset.meta
    teacher_dims = list(meta.teacher_dims)
    teacher_scales = list(meta.logit_scales)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    result = train_student(
        model,
        dataset,
        cfg,
        teacher_dims,
        teacher_scales,
        collate=collate,
        tracker=ctx.tracker,
        progress=ctx.progress,
        device=device,
        checkpoints=checkpoints,
    )
    save_outputs(model, result, cfg, ctx.out_dir)
    # The result is in the stage's output now; a rerun of the same training retrains from zero.
    checkpoints.clear()
    ctx.tracker.log_artifact(ctx.out_dir / STAGE_MODEL_DIR, STAGE_MODEL_DIR)

    # Samples the loader could not use, by reason (counted, never silently dropped).
    skipped: dict[str, int] = dict(getattr(dataset, "skipped", {}))
    metrics = {
        "final_loss": result.final_loss,
        "steps": float(result.steps),
        "samples_per_second": result.samples_per_second,
        "train_seconds": result.train_seconds,
    }
    summary = {
        "variant": cfg.model,
        "num_params": sum(p.numel() for p in model.parameters()),
        "samples": len(dataset),
        "skipped": sum(skipped.values()),
        "skipped_by_reason": skipped,
        "batch_size": result.batch_size,
        "epochs_seen": result.epoch + 1,
        "teachers": list(meta.teachers),
        "teacher_dims": teacher_dims,
        "teacher_scales": teacher_scales,
        "distill_lambda": cfg.distill_lambda,
        "use_synthetic_captions": cfg.use_synthetic_captions,
        "device": device.type,
        "resumed_from_step": result.resumed_from_step,
        "first_loss": float(result.history["loss"].iloc[0]),
        "final_loss": result.final_loss,
        "final_logit_scale": float(result.history["logit_scale"].iloc[-1]),
        # DVC sees init_checkpoint as a path string; the content hash is the lineage.
        "init_checkpoint": (
            None
            if cfg.init_checkpoint is None
            else {"path": cfg.init_checkpoint, "sha256": path_sha256(Path(cfg.init_checkpoint))}
        ),
    }
    return StageOutcome(
        manifest=artifact_manifest(ctx.out_dir, result.final_loss),
        summary=summary,
        metrics=metrics,
        previews={"loss_curve": LOSS_CURVE},
    )
