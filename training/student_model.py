"""``student_model`` stage: train a student with the MobileCLIP loss from stored teacher embeddings.

Input: the ``reinforced_dataset`` folder (``shards/*.tar`` + ``dr_meta.json``). Each step
draws a batch of images, each with one stored augmentation replayed at the student's
resolution, its real caption and one synthetic caption, and the teachers' stored embeddings
of exactly those. No teacher runs here (METHOD.md 1). Outputs per docs/stages.md.

Seeding: the model init and every epoch's sample order derive from ``student_model.seed``
(an epoch's order from ``seed`` and the epoch number alone), so a run is repeatable and a
checkpoint's (epoch, batch) position is enough to resume the data stream.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, default_collate

from clipforge.config import StudentModelConfig
from clipforge.files import path_sha256
from clipforge.stage_api import NullTracker, StageContext, StageOutcome, Tracker
from training.losses import mobileclip_loss
from training.models.checkpoints import load_pretrained_student
from training.models.students import StudentClip, build_student, is_folded_student, save_student
from training.optim import cosine_lr, set_lr

MODEL_DIR = "model"
HISTORY_FILE = "history.parquet"
CHECKPOINT_FILE = "checkpoint.pt"
LOSS_CURVE = "previews/loss_curve.png"
# The learnable temperature exp(logit_scale) is capped at 100 (METHOD.md 2.7).
MAX_LOGIT_SCALE = math.log(100.0)
# Keys a batch must carry (the reinforced data loader's item layout); *_syn only when
# synthetic captions are used.
BATCH_KEYS = ("pixels", "tokens_real", "t_img", "t_txt_real")
SYN_KEYS = ("tokens_syn", "t_txt_syn")

ProgressFn = Callable[[Iterator[int], str, int], Iterator[int]]


@dataclass
class TrainResult:
    history: pd.DataFrame  # one row per step: step, epoch, loss, loss_clip, loss_distill, lr, ...
    optimizer: torch.optim.Optimizer
    steps: int
    epoch: int  # epoch of the last step (0-based)
    batch_in_epoch: int  # batches of that epoch consumed, for resuming the data stream
    batch_size: int
    train_seconds: float
    samples_per_second: float
    final_loss: float


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases, norm weights, the logit scale and embeddings.

    Every parameter of rank < 2 is a bias, a norm gain, a class token or the logit scale;
    token and positional embeddings are matrices, so they are excluded by name.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "embedding" in name or "logit_scale" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _epoch_loader(
    dataset: Dataset, batch_size: int, seed: int, epoch: int, collate: Callable, num_workers: int
) -> DataLoader:
    # The order depends only on (seed, epoch): resuming at an epoch replays the same order.
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=RandomSampler(dataset, generator=generator),
        drop_last=True,  # a contrastive batch must be full: every step sees B x B logits
        collate_fn=collate,
        num_workers=num_workers,
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every RNG the trainer touches, for the checkpoint (exact resume restores these).

    Only tuples, ints, floats, strings and tensors, so ``torch.load(weights_only=True)`` reads
    the checkpoint: numpy's MT19937 key (624 uint32) is stored as an int64 tensor.
    """
    kind, key, position, has_gauss, cached_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(position), int(has_gauss), float(cached_gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(state["python"])
    kind, key, position, has_gauss, cached_gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), position, has_gauss, cached_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_student(
    model: StudentClip,
    dataset: Dataset,
    cfg: StudentModelConfig,
    teacher_dims: Sequence[int],
    teacher_scales: Sequence[float],
    *,
    collate: Callable | None = None,
    tracker: Tracker | None = None,
    progress: ProgressFn | None = None,
    device: torch.device | None = None,
) -> TrainResult:
    """Run ``cfg.steps`` optimisation steps of the MobileCLIP loss; the model trains in place.

    ``dataset`` items: ``pixels`` [3, S, S] in [0, 1], ``tokens_real`` / ``tokens_syn`` [L],
    ``t_img`` / ``t_txt_real`` / ``t_txt_syn`` [sum D_k]; it may have ``set_epoch(e)`` to pick
    each epoch's stored augmentation and synthetic caption.
    """
    tracker = tracker or NullTracker()
    collate = collate or default_collate
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n = len(dataset)
    if n < 2:
        raise ValueError(f"the reinforced dataset holds {n} usable samples; a contrastive batch needs at least 2")
    if cfg.steps < 1:
        raise ValueError(f"student_model.steps must be >= 1, got {cfg.steps}")
    # A dataset smaller than the configured batch trains on full-dataset batches (reported).
    batch_size = min(cfg.batch_size, n)

    model.to(device).train()
    # eps 1e-6 as open_clip uses for ViT towers: 1e-8 lets rarely-updated rows take huge steps.
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-6
    )
    # bf16 autocast only on CUDA; on CPU fp32 is faster than emulated bf16 here.
    use_amp = device.type == "cuda"
    params = [p for p in model.parameters() if p.requires_grad]

    def batches() -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
        epoch = 0
        while True:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            loader = _epoch_loader(dataset, batch_size, cfg.seed, epoch, collate, cfg.num_workers)
            for index, batch in enumerate(loader):
                yield epoch, index + 1, batch
            epoch += 1

    rows: list[dict[str, float]] = []
    stream = batches()
    steps_iter = iter(range(cfg.steps))
    if progress is not None:
        steps_iter = progress(steps_iter, "train steps", cfg.steps)
    epoch = batch_in_epoch = 0
    started = time.perf_counter()
    for step in steps_iter:
        epoch, batch_in_epoch, batch = next(stream)
        required = BATCH_KEYS + SYN_KEYS if cfg.use_synthetic_captions else BATCH_KEYS
        missing = [k for k in required if k not in batch]
        if missing:
            raise KeyError(f"reinforced batch lacks {missing}")
        lr = cosine_lr(step, cfg.steps, cfg.warmup_steps, cfg.lr)
        set_lr(optimizer, lr)
        pixels = batch["pixels"].to(device, non_blocking=True)
        t_img = batch["t_img"].to(device)
        t_real = batch["t_txt_real"].to(device)
        tokens = batch["tokens_real"]
        if cfg.use_synthetic_captions:
            # One text pass over real and synthetic captions together: [2B, L].
            tokens = torch.cat([tokens, batch["tokens_syn"]])
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            s_img = model.encode_image(pixels)  # [B, D]
            s_txt = model.encode_text(tokens.to(device))  # [B or 2B, D]
        scale = model.logit_scale.exp().clamp(max=100.0)
        if cfg.use_synthetic_captions:
            s_real, s_syn = s_txt.split(pixels.shape[0])
            t_syn = batch["t_txt_syn"].to(device)
        else:
            s_real, s_syn, t_syn = s_txt, None, None
        out = mobileclip_loss(
            s_img, s_real, s_syn, scale, t_img, t_real, t_syn, teacher_dims, teacher_scales, cfg.distill_lambda
        )
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # max_norm=inf measures the norm without clipping when clipping is off.
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf))
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

        row = {
            "step": step + 1,
            "epoch": epoch,
            "loss": loss.item(),
            "loss_clip": out["loss_clip"].item(),
            "loss_distill": out["loss_distill"].item(),
            "lr": lr,
            "logit_scale": float(model.logit_scale.detach().exp()),
            "grad_norm": grad_norm,
        }
        rows.append(row)
        if (step + 1) % max(cfg.log_every, 1) == 0 or step + 1 == cfg.steps:
            tracker.log_metrics(
                {k: row[k] for k in ("loss", "loss_clip", "loss_distill", "lr", "logit_scale")}, step + 1
            )
    train_seconds = time.perf_counter() - started

    history = pd.DataFrame(rows)
    # Final loss: mean over the last logging window, less noisy than the last batch alone.
    window = max(1, min(cfg.log_every, len(history)))
    return TrainResult(
        history=history,
        optimizer=optimizer,
        steps=cfg.steps,
        epoch=epoch,
        batch_in_epoch=batch_in_epoch,
        batch_size=batch_size,
        train_seconds=train_seconds,
        samples_per_second=cfg.steps * batch_size / max(train_seconds, 1e-9),
        final_loss=float(history["loss"].iloc[-window:].mean()),
    )


def save_loss_curve(history: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_loss, ax_scale) = plt.subplots(1, 2, figsize=(10, 3.5))
    for column in ("loss", "loss_clip", "loss_distill"):
        ax_loss.plot(history["step"], history[column], label=column, linewidth=1)
    ax_loss.set_xlabel("step")
    ax_loss.set_title("student loss")
    ax_loss.legend()
    ax_scale.plot(history["step"], history["logit_scale"], color="tab:purple", label="logit scale")
    ax_scale.set_xlabel("step")
    ax_scale.set_ylabel("logit scale (solid)")
    ax_scale.set_title("logit scale / learning rate")
    ax_lr = ax_scale.twinx()
    ax_lr.plot(history["step"], history["lr"], color="tab:gray", linestyle="--", label="lr")
    ax_lr.set_ylabel("learning rate (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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


def save_outputs(model: StudentClip, result: TrainResult, cfg: StudentModelConfig, out_dir: Path) -> None:
    """model/, history.parquet, checkpoint.pt, previews/loss_curve.png under ``out_dir``."""
    model = model.cpu().eval()
    save_student(model, out_dir / MODEL_DIR)
    result.history.to_parquet(out_dir / HISTORY_FILE, index=False)
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": result.optimizer.state_dict(),
            "step": result.steps,
            "epoch": result.epoch,
            "batch_in_epoch": result.batch_in_epoch,
            "batch_size": result.batch_size,
            "rng": rng_state(),
            "config": cfg.model_dump(mode="json"),
        },
        out_dir / CHECKPOINT_FILE,
    )
    save_loss_curve(result.history, out_dir / LOSS_CURVE)


def _open_reinforced(folder: Path, tokenizer: Callable, image_size: int, seed: int) -> tuple[Any, Any, Callable]:
    """(dataset, DRMeta, collate) from a published ``reinforced_dataset`` folder."""
    from training.data.reinforced import ReinforcedDataset, collate

    dataset = ReinforcedDataset.from_stage_dir(folder, tokenizer, image_size, seed)
    return dataset, dataset.meta, collate


def initial_student(cfg: StudentModelConfig) -> StudentClip:
    """A fresh ``cfg.model`` student, or one holding ``cfg.init_checkpoint``'s weights."""
    if cfg.init_checkpoint is None:
        return build_student(cfg.model)
    if is_folded_student(Path(cfg.init_checkpoint)):
        # Folded blocks have lost their train-time branches: training them is not the recipe.
        raise ValueError(
            f"student_model.init_checkpoint={cfg.init_checkpoint!r} is a reparameterized (folded) student; "
            "start from the unfolded student_model folder instead"
        )
    return load_pretrained_student(cfg.model, cfg.init_checkpoint)


def run(ctx: StageContext) -> StageOutcome:
    cfg = ctx.params.student_model
    folder = ctx.inputs["reinforced_dataset"]
    _seed_everything(cfg.seed)
    model = initial_student(cfg)
    if model.info.image_size != cfg.image_size:
        raise ValueError(
            f"student_model.image_size={cfg.image_size} but variant {cfg.model!r} takes {model.info.image_size} px"
        )
    dataset, meta, collate = _open_reinforced(folder, model.tokenizer(), cfg.image_size, cfg.seed)
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
    )
    save_outputs(model, result, cfg, ctx.out_dir)
    ctx.tracker.log_artifact(ctx.out_dir / MODEL_DIR, MODEL_DIR)

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
