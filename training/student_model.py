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
from clipforge.progress import Progress, no_progress
from clipforge.stage_api import MANIFEST_FILE, StageContext, StageOutcome, Tracker
from training.data.reinforced import ReinforcedDataset, collate
from training.data.streaming import StreamingReinforced, read_meta, shard_urls
from training.models.checkpoints import initial_student
from training.models.open_clip_models import load_teachers
from training.models.students import STAGE_MODEL_DIR, StudentClip, save_student
from training.trainers.checkpointing import CheckpointStore
from training.trainers.distributed import init_process_group, launch, world
from training.trainers.online_teachers import OnlineTeachers
from training.trainers.plots import HISTORY_FILE, LOSS_CURVE, save_loss_curve
from training.trainers.student import StudentTrainResult, logged_metrics, seed_everything, train_student

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
# (nproc too: a run killed under one process count resumes under another.)
_NOT_TRAINING = ("log_every", "num_workers", "checkpoint_every", "keep_checkpoints", "checkpoint_dir", "nproc")


def run_fingerprint(cfg: StudentModelConfig, reinforced_dataset: Path, teacher_models: Path | None = None) -> str:
    """What a run trains, hashed: the training keys, the input data's manifest, the init weights
    and, with online teachers, the teachers' manifest.

    Resumable checkpoints are kept under this name, so only the same training resumes them.
    """
    facts = {
        "student_model": {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_TRAINING},
        "reinforced_dataset": path_sha256(reinforced_dataset / MANIFEST_FILE),
        "init_checkpoint": None if cfg.init_checkpoint is None else path_sha256(Path(cfg.init_checkpoint)),
        "teacher_models": (
            path_sha256(teacher_models / MANIFEST_FILE)
            if cfg.teacher_embeddings == "online" and teacher_models is not None
            else None
        ),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _prepare(
    cfg: StudentModelConfig, folder: Path, online: OnlineTeachers | None = None
) -> tuple[StudentClip, ReinforcedDataset | StreamingReinforced]:
    """The seeded initial student and its reinforced data: in memory (the same in every
    process) or a stream of this process's share of each batch."""
    seed_everything(cfg.seed)
    model = initial_student(cfg)
    if model.info.image_size != cfg.image_size:
        raise ValueError(
            f"student_model.image_size={cfg.image_size} but variant {cfg.model!r} takes {model.info.image_size} px"
        )
    teacher_inputs = online.loader_inputs() if online is not None else ()
    if cfg.loader == "stream":
        _, world_size = world()
        stream = StreamingReinforced(
            shard_urls(folder),
            read_meta(folder),
            model.tokenizer(),
            cfg.image_size,
            cfg.batch_size // world_size,
            seed=cfg.seed,
            shuffle_buffer=cfg.stream.shuffle_buffer,
            shard_shuffle=cfg.stream.shard_shuffle,
            resampled=cfg.stream.resampled,
            num_workers=cfg.num_workers,
            teacher_tokenizers=teacher_inputs,
        )
        return model, stream
    return model, ReinforcedDataset.from_stage_dir(folder, model.tokenizer(), cfg.image_size, cfg.seed, teacher_inputs)


def _train(
    cfg: StudentModelConfig,
    folder: Path,
    teachers_folder: Path | None,
    checkpoints: CheckpointStore,
    device: torch.device,
    tracker: Tracker | None = None,
    progress: Progress = no_progress,
) -> tuple[StudentClip, ReinforcedDataset, StudentTrainResult]:
    online = None
    if cfg.teacher_embeddings == "online":
        if teachers_folder is None:
            raise ValueError("student_model.teacher_embeddings=online needs the teacher_models input")
        online = OnlineTeachers(load_teachers(teachers_folder, device=str(device)), device)
    model, dataset = _prepare(cfg, folder, online)
    meta = dataset.meta
    result = train_student(
        model,
        dataset,
        cfg,
        list(meta.teacher_dims),
        list(meta.logit_scales),
        collate=collate,
        tracker=tracker,
        progress=progress,
        device=device,
        checkpoints=checkpoints,
        online_teachers=online,
    )
    return model, dataset, result


def train_process(cfg_json: str, folder: str, teachers_folder: str, checkpoint_folder: str, result_file: str) -> None:
    """One process of a data-parallel run (``student_model.nproc > 1``, started by the launcher).

    Rank 0 leaves the result in ``result_file`` for the stage, which publishes it.
    """
    device = init_process_group()
    try:
        cfg = StudentModelConfig.model_validate_json(cfg_json)
        store = CheckpointStore(Path(checkpoint_folder), cfg.keep_checkpoints)
        _, _, result = _train(cfg, Path(folder), Path(teachers_folder) if teachers_folder else None, store, device)
        if torch.distributed.get_rank() == 0:
            # The weights travel in final_state; the live optimiser and KD module stay here.
            result.optimizer, result.kd_loss = None, None
            torch.save(result, result_file)
    finally:
        torch.distributed.destroy_process_group()


def run(ctx: StageContext) -> StageOutcome:
    cfg = ctx.params.student_model
    folder = ctx.inputs["reinforced_dataset"]
    teachers_folder = ctx.inputs.get("teacher_models")
    checkpoints = CheckpointStore(
        Path(cfg.checkpoint_dir) / ctx.name / run_fingerprint(cfg, folder, teachers_folder), cfg.keep_checkpoints
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.nproc > 1:
        result_file = ctx.out_dir / "distributed_result.pt"
        args = [
            cfg.model_dump_json(),
            str(folder),
            str(teachers_folder or ""),
            str(checkpoints.folder),
            str(result_file),
        ]
        launch(cfg.nproc, train_process, args)
        model, dataset = _prepare(cfg, folder)
        # Our own file, written by rank 0 a moment ago: a pickled StudentTrainResult.
        result = torch.load(result_file, weights_only=False)
        result_file.unlink()
        model.load_state_dict(result.final_state["model"])
        for row in result.history.to_dict("records"):
            if row["step"] % cfg.log_every == 0 or row["step"] == cfg.steps:
                ctx.tracker.log_metrics(logged_metrics(row), int(row["step"]))
    else:
        model, dataset, result = _train(cfg, folder, teachers_folder, checkpoints, device, ctx.tracker, ctx.progress)
    meta = dataset.meta
    # What the targets came from: the stored embeddings' teachers, or those run online.
    teacher_dims, teacher_scales = result.teacher_dims, result.teacher_scales
    save_outputs(model, result, cfg, ctx.out_dir)
    # The result is in the stage's output now; a rerun of the same training retrains from zero.
    checkpoints.clear()
    ctx.tracker.log_artifact(ctx.out_dir / STAGE_MODEL_DIR, STAGE_MODEL_DIR)

    # Samples the loader could not use, by reason (counted, never silently dropped); a stream
    # counts those it met while training.
    skipped: dict[str, int] = dict(getattr(dataset, "skipped", result.stream_skipped))
    metrics = {
        "final_loss": result.final_loss,
        "steps": float(result.steps),
        "samples_per_second": result.samples_per_second,
        "train_seconds": result.train_seconds,
    }
    summary = {
        "variant": cfg.model,
        "num_params": sum(p.numel() for p in model.parameters()),
        "loader": cfg.loader,
        # A stream has no length: the samples the run drew instead.
        "samples": len(dataset) if isinstance(dataset, ReinforcedDataset) else result.steps * result.batch_size,
        "skipped": sum(skipped.values()),
        "skipped_by_reason": skipped,
        "batch_size": result.batch_size,
        "epochs_seen": result.epoch + 1,
        "teachers": list(meta.teachers),
        "teacher_dims": teacher_dims,
        "teacher_scales": teacher_scales,
        "distill_lambda": cfg.distill_lambda,
        "teacher_embeddings": cfg.teacher_embeddings,
        "kd": {term: weight for term, weight in cfg.kd.weights().items() if weight > 0},
        "use_synthetic_captions": cfg.use_synthetic_captions,
        "device": device.type,
        "processes": cfg.nproc,
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
