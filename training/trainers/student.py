"""The student trainer: the MobileCLIP loss from stored teacher embeddings (docs/method.md §1, §2.7),
plus any of CLIP-KD's terms (§3) that ``student_model.kd`` weights above 0.

Each step draws a batch of images, each with one stored augmentation replayed at the student's
resolution, its real caption and one synthetic caption, and the teachers' stored embeddings of
exactly those. No teacher runs here.

Seeding: the model init and every epoch's sample order derive from ``student_model.seed`` (an
epoch's order from ``seed`` and the epoch number alone), so a run is repeatable and a
checkpoint's (epoch, batch) position is enough to resume the data stream.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, default_collate

from clipforge.config import StudentModelConfig
from clipforge.progress import Progress, no_progress
from clipforge.stage_api import NullTracker, Tracker
from training.data.streaming import SKIPPED_KEY, StreamingReinforced
from training.losses.clip_kd import ClipKDLoss
from training.losses.mobileclip import mobileclip_loss
from training.models.students import StudentClip
from training.optim import adamw, clamp_logit_scale_, cosine_lr, scale_multiplier, set_lr
from training.trainers.checkpointing import CheckpointStore
from training.trainers.distributed import gather_with_local_grad, match_single_process_gradients, rank_share, world
from training.trainers.online_teachers import OnlineTeachers

# Keys a batch must carry (the reinforced data loader's item layout); *_syn only when
# synthetic captions are used.
BATCH_KEYS = ("pixels", "tokens_real", "t_img", "t_txt_real")
SYN_KEYS = ("tokens_syn", "t_txt_syn")


@dataclass
class StudentTrainResult:
    history: pd.DataFrame  # one row per step: step, epoch, loss, loss_clip, loss_distill, lr, ...
    optimizer: torch.optim.Optimizer | None  # None once the result left its process
    steps: int
    epoch: int  # epoch of the last step (0-based)
    batch_in_epoch: int  # batches of that epoch consumed, for resuming the data stream
    batch_size: int
    train_seconds: float
    samples_per_second: float
    final_loss: float
    # CLIP-KD's learned parts (projections, fusion, ICL scale) when a KD term is on, else None.
    kd_loss: ClipKDLoss | None = None
    # What checkpoint.pt holds (training_state at the last step), and the step it resumed at.
    final_state: dict[str, Any] = field(default_factory=dict)
    resumed_from_step: int = 0
    # A streaming loader's skipped samples by reason, as this run met them (memory: {}).
    stream_skipped: dict[str, int] = field(default_factory=dict)
    # The teachers the targets came from: the stored embeddings' or the online teachers' sizes.
    teacher_dims: list[int] = field(default_factory=list)
    teacher_scales: list[float] = field(default_factory=list)


def _epoch_loader(
    dataset: Dataset, batch_size: int, seed: int, epoch: int, collate: Callable, num_workers: int, skip_batches: int = 0
) -> DataLoader:
    """One epoch's batches, the first ``skip_batches`` left out (a resumed run's position); in a
    data-parallel run, this rank's share of each global batch of ``batch_size``."""
    # The order depends only on (seed, epoch): resuming at an epoch replays the same order.
    # (The same permutation RandomSampler draws from this generator.)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(dataset), generator=generator)[skip_batches * batch_size :].tolist()
    rank, size = world()
    return DataLoader(
        dataset,
        batch_size=batch_size // size,
        sampler=rank_share(order, batch_size, rank, size),
        drop_last=True,  # a contrastive batch must be full: every step sees B x B logits
        collate_fn=collate,
        num_workers=num_workers,
        # The loader's worker seeds come from this generator, not the global RNG, so starting
        # an epoch's loader mid-epoch (on resume) draws nothing the uninterrupted run did not.
        generator=generator,
    )


def seed_everything(seed: int) -> None:
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
    dataset: Dataset | StreamingReinforced,
    cfg: StudentModelConfig,
    teacher_dims: Sequence[int],
    teacher_scales: Sequence[float],
    *,
    collate: Callable | None = None,
    tracker: Tracker | None = None,
    progress: Progress = no_progress,
    device: torch.device | None = None,
    after_step: Callable[[int], float] | None = None,
    checkpoints: CheckpointStore | None = None,
    online_teachers: OnlineTeachers | None = None,
) -> StudentTrainResult:
    """Run ``cfg.steps`` optimisation steps of the MobileCLIP loss; the model trains in place.

    With ``online_teachers``, the teachers embed each batch's view and captions during training
    in place of the stored embeddings, and their sizes and scales replace ``teacher_dims`` /
    ``teacher_scales`` (the stored embeddings').

    ``after_step(step)`` (1-based) runs after every optimiser step, e.g. to evaluate; it
    returns the seconds it spent, which ``train_seconds`` leaves out.

    With ``checkpoints``, the newest checkpoint there is resumed (weights, optimiser, CLIP-KD
    parts, step, data position, RNGs, history) and a new one is written every
    ``cfg.checkpoint_every`` steps and at the last; the run then ends as an uninterrupted one.

    ``dataset`` is a map-style dataset (batched here, an epoch's order from the seed) or a
    :class:`StreamingReinforced` (which batches itself). Its items: ``pixels`` [3, S, S] in [0, 1], ``tokens_real`` / ``tokens_syn`` [L],
    ``t_img`` / ``t_txt_real`` / ``t_txt_syn`` [sum D_k]; it may have ``set_epoch(e)`` to pick
    each epoch's stored augmentation and synthetic caption.
    """
    tracker = tracker or NullTracker()
    collate = collate or default_collate
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    streaming = hasattr(dataset, "epoch_batches")
    if cfg.steps < 1:
        raise ValueError(f"student_model.steps must be >= 1, got {cfg.steps}")
    if streaming:
        # The stream batches itself (this rank's share); it has no length to check.
        batch_size = cfg.batch_size
    else:
        n = len(dataset)
        if n < 2:
            raise ValueError(f"the reinforced dataset holds {n} usable samples; a contrastive batch needs at least 2")
        # A dataset smaller than the configured batch trains on full-dataset batches (reported).
        batch_size = min(cfg.batch_size, n)

    model.to(device).train()
    if online_teachers is not None:
        teacher_dims, teacher_scales = online_teachers.dims, online_teachers.scales
    kd = ClipKDLoss(cfg.kd.weights(), model.info.embed_dim, teacher_dims, teacher_scales).to(device)
    rank, world_size = world()
    encoders: nn.Module = _Encoders(model, cfg.kd.mfd_mask_ratio if kd.needs_masked_view else None)
    if world_size > 1:
        # DDP broadcasts rank 0's weights and averages the towers' gradients; the KD module
        # stays outside it (its gradient is whole on every rank) and starts from rank 0's draw.
        encoders = DistributedDataParallel(encoders)
        for tensor in kd.state_dict().values():
            torch.distributed.broadcast(tensor, 0)
    loss_factor = match_single_process_gradients([model.logit_scale, *kd.parameters()])
    if cfg.accum_steps > 1:
        # Applied to the whole batch in each of the accum_steps passes (see _accumulate).
        for param in [model.logit_scale, *kd.parameters()]:
            param.register_hook(lambda grad: grad / cfg.accum_steps)
    # The KD module's projections and scales train with the student, in one optimiser.
    trained = torch.nn.ModuleList([model, kd]) if kd.active else model
    optimizer = adamw(trained, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2))
    # auto: bf16 autocast on CUDA only. On a CPU with native bf16 (AMD EPYC, AVX512-BF16) the
    # default student measured 0.79-0.95 s/step with it against 0.83-0.85 without: no gain.
    use_amp = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    params = [p for p in trained.parameters() if p.requires_grad]

    rows: list[dict[str, float]] = []
    start_step = epoch = batch_in_epoch = 0
    resumed = checkpoints.latest() if checkpoints is not None else None
    if resumed is not None:
        if resumed["batch_size"] != batch_size or resumed["step"] > cfg.steps:
            raise ValueError(
                f"checkpoint in {checkpoints.folder} is of another run (batch {resumed['batch_size']}, "
                f"step {resumed['step']}; this run: batch {batch_size}, {cfg.steps} steps)"
            )
        model.load_state_dict(resumed["model"])
        if kd.active:
            kd.load_state_dict(resumed["kd_loss"])
        optimizer.load_state_dict(resumed["optimizer"])
        start_step, epoch, batch_in_epoch = resumed["step"], resumed["epoch"], resumed["batch_in_epoch"]
        rows = [dict(row) for row in resumed["history"]]
        restore_rng_state(resumed["rng"])

    stream_skipped: Counter[str] = Counter()  # a streaming loader's unusable samples, by reason

    def batches(first_epoch: int, skip: int) -> Iterator[tuple[int, int, dict[str, torch.Tensor]]]:
        epoch = first_epoch
        while True:
            if streaming:
                loader: Iterable[dict[str, Any]] = dataset.epoch_batches(epoch, skip)
            else:
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(epoch)
                loader = _epoch_loader(dataset, batch_size, cfg.seed, epoch, collate, cfg.num_workers, skip)
            consumed = skip
            for batch in loader:
                stream_skipped.update(batch.get(SKIPPED_KEY, {}))
                if len(batch) == 1 and SKIPPED_KEY in batch:
                    continue  # skips only, after an epoch's last full batch
                consumed += 1
                yield epoch, consumed, batch
            if consumed == skip and skip == 0:
                raise ValueError(f"epoch {epoch} of the reinforced data yields no full batch of {batch_size}")
            epoch, skip = epoch + 1, 0

    def state(step: int) -> dict[str, Any]:
        return training_state(
            model,
            kd,
            optimizer,
            cfg,
            step=step,
            epoch=epoch,
            batch_in_epoch=batch_in_epoch,
            batch_size=batch_size,
            history=rows,
        )

    stream = batches(epoch, batch_in_epoch)
    step_loss = _StepLoss(encoders, kd, cfg, teacher_dims, teacher_scales, device, use_amp)
    steps_iter = progress(iter(range(start_step, cfg.steps)), "train steps", cfg.steps - start_step)
    started = time.perf_counter()
    hook_seconds = 0.0
    for step in steps_iter:
        epoch, batch_in_epoch, batch = next(stream)
        required = BATCH_KEYS + SYN_KEYS if cfg.use_synthetic_captions else BATCH_KEYS
        missing = [k for k in required if k not in batch]
        if missing:
            raise KeyError(f"reinforced batch lacks {missing}")
        lr = cosine_lr(step, cfg.steps, cfg.warmup_steps, cfg.lr)
        set_lr(optimizer, lr)
        pixels = batch["pixels"].to(device, non_blocking=True)
        tokens_real = batch["tokens_real"].to(device)
        tokens_syn = batch["tokens_syn"].to(device) if cfg.use_synthetic_captions else None
        if online_teachers is not None:
            targets = online_teachers.embed(batch, pixels, cfg.use_synthetic_captions)
        else:
            t_syn = batch["t_txt_syn"].to(device) if cfg.use_synthetic_captions else None
            targets = (batch["t_img"].to(device), batch["t_txt_real"].to(device), t_syn)

        encode = functools.partial(step_loss.encode, pixels, tokens_real, tokens_syn)
        batch_loss = functools.partial(step_loss.loss, targets=targets, step=step + 1)
        optimizer.zero_grad(set_to_none=True)
        local = pixels.shape[0]
        if cfg.accum_steps == 1:
            loss, out, kd_parts = batch_loss(encode(slice(0, local)))
            (loss * loss_factor).backward()
        else:
            loss, out, kd_parts = _accumulate(encode, batch_loss, local, cfg.accum_steps, encoders, loss_factor)
        # max_norm=inf measures the norm without clipping when clipping is off.
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf))
        optimizer.step()
        clamp_logit_scale_(model.logit_scale)
        kd.clamp_scales_()

        row = {
            "step": step + 1,
            "epoch": epoch,
            "loss": loss.item(),
            "loss_clip": out["loss_clip"].item(),
            "loss_distill": out["loss_distill"].item(),
            "lr": lr,
            "logit_scale": float(model.logit_scale.detach().exp()),
            "grad_norm": grad_norm,
            **kd_parts,
        }
        rows.append(row)
        if (step + 1) % max(cfg.log_every, 1) == 0 or step + 1 == cfg.steps:
            tracker.log_metrics(logged_metrics(row), step + 1)
        if checkpoints is not None and rank == 0 and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            checkpoints.save(state(step + 1), step + 1)
        if after_step is not None:
            hook_seconds += after_step(step + 1)
    train_seconds = time.perf_counter() - started - hook_seconds
    final_state = state(cfg.steps)
    if checkpoints is not None and rank == 0 and checkpoints.steps()[-1:] != [cfg.steps]:
        checkpoints.save(final_state, cfg.steps)

    history = pd.DataFrame(rows)
    # Final loss: mean over the last logging window, less noisy than the last batch alone.
    window = max(1, min(cfg.log_every, len(history)))
    return StudentTrainResult(
        history=history,
        optimizer=optimizer,
        steps=cfg.steps,
        epoch=epoch,
        batch_in_epoch=batch_in_epoch,
        batch_size=batch_size,
        train_seconds=train_seconds,
        samples_per_second=(cfg.steps - start_step) * batch_size / max(train_seconds, 1e-9),
        final_loss=float(history["loss"].iloc[-window:].mean()),
        kd_loss=kd if kd.active else None,
        final_state=final_state,
        resumed_from_step=start_step,
        stream_skipped=dict(sorted(stream_skipped.items())),
        teacher_dims=list(teacher_dims),
        teacher_scales=list(teacher_scales),
    )


@dataclass
class _Features:
    """One micro-batch's student embeddings: image [b, D], real and synthetic caption text
    [b, D] (synthetic None without), MFD's masked view [b, D] or None, the logit scale."""

    image: torch.Tensor
    real: torch.Tensor
    syn: torch.Tensor | None
    masked: torch.Tensor | None
    scale: torch.Tensor

    @staticmethod
    def cat(parts: Sequence[_Features], scale: torch.Tensor) -> _Features:
        """The parts' rows in order, with ``scale`` (the live pass's, which carries a graph)."""

        def join(name: str) -> torch.Tensor | None:
            tensors = [getattr(p, name) for p in parts]
            return None if tensors[0] is None else torch.cat(tensors)

        return _Features(join("image"), join("real"), join("syn"), join("masked"), scale)  # type: ignore[arg-type]


@dataclass
class _StepLoss:
    """A step's two halves: encode a micro-batch's rows, and the whole batch's loss."""

    encoders: nn.Module
    kd: ClipKDLoss
    cfg: StudentModelConfig
    teacher_dims: Sequence[int]
    teacher_scales: Sequence[float]
    device: torch.device
    use_amp: bool

    def encode(
        self, pixels: torch.Tensor, tokens_real: torch.Tensor, tokens_syn: torch.Tensor | None, rows: slice
    ) -> _Features:
        tokens = tokens_real[rows]
        if tokens_syn is not None:
            # One text pass over real and synthetic captions together: [2b, L].
            tokens = torch.cat([tokens, tokens_syn[rows]])
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp):
            s_img, s_txt, s_img_masked, scale = self.encoders(pixels[rows], tokens)
        # The losses (and CLIP-KD's projections) run in float32 whatever the towers ran in.
        s_img, s_txt = s_img.float(), s_txt.float()
        s_img_masked = None if s_img_masked is None else s_img_masked.float()
        s_real, s_syn = s_txt.split(s_img.shape[0]) if tokens_syn is not None else (s_txt, None)
        return _Features(s_img, s_real, s_syn, s_img_masked, scale)

    def loss(
        self, features: _Features, *, targets: Sequence[torch.Tensor | None], step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
        """(loss, MobileCLIP's parts, CLIP-KD's parts) of the whole batch; ``targets`` are the
        teachers' (image, real text, synthetic text or None) embeddings of this rank's rows."""
        # Data parallel: every rank's loss is the global batch's, [B, D] each from [B / world, D].
        s_img, s_real, s_syn, s_img_masked = (
            None if x is None else gather_with_local_grad(x)
            for x in (features.image, features.real, features.syn, features.masked)
        )
        t_img, t_real, t_syn = (None if x is None else gather_with_local_grad(x) for x in targets)
        out = mobileclip_loss(
            s_img, s_real, s_syn, features.scale, t_img, t_real, t_syn, self.teacher_dims, self.teacher_scales,
            self.cfg.distill_lambda,
        )  # fmt: skip
        loss = out["loss"]
        kd_parts: dict[str, float] = {}
        if self.kd.active:
            # Like L(B_real) + L(B_syn): the KD terms of every caption set, summed.
            sets = [(s_real, t_real)] + ([(s_syn, t_syn)] if s_syn is not None else [])
            kd_outs = [self.kd(s_img, s_set, features.scale, t_img, t_set, s_img_masked) for s_set, t_set in sets]
            kd_total = {key: sum(o[key] for o in kd_outs) for key in kd_outs[0]}
            loss = loss + kd_total["loss_kd"]
            kd_parts = {key: float(value.detach()) for key, value in kd_total.items()}
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}")
        return loss, out, kd_parts


def _accumulate(
    encode: Callable[..., _Features],
    batch_loss: Callable[[_Features], tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]],
    local: int,
    accum_steps: int,
    encoders: nn.Module,
    loss_factor: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
    """Gradient accumulation that keeps the contrastive loss over the whole batch (open_clip's
    ``--accum-freq``): every micro-batch is encoded once without a graph, then each in turn
    again with one, beside the others' cached features, and the whole batch's loss is
    backpropagated through that micro-batch alone. The tower gradients sum to the full batch's;
    the logit scale and CLIP-KD's parts, applied to the whole batch in every pass, have their
    gradient divided by ``accum_steps`` by the hooks the trainer registered. Only one
    micro-batch's activations are alive at a time.

    Each micro-batch's second pass replays the RNG state of its first, so MFD's masks (and any
    dropout) are the same draw; batch-norm running statistics see each micro-batch twice.
    """
    if local % accum_steps:
        raise ValueError(f"a batch of {local} does not split into {accum_steps} micro-batches")
    size = local // accum_steps
    rows = [slice(j * size, (j + 1) * size) for j in range(accum_steps)]
    states, cached = [], []
    with torch.no_grad():
        for part in rows:
            states.append(torch.get_rng_state())
            cached.append(encode(part))
    after = torch.get_rng_state()
    for j, part in enumerate(rows):
        torch.set_rng_state(states[j])
        # DDP averages gradients on the last backward only; the others accumulate locally.
        last = j == accum_steps - 1
        sync = contextlib.nullcontext() if last or not hasattr(encoders, "no_sync") else encoders.no_sync()
        with sync:
            live = encode(part)
            loss, out, kd_parts = batch_loss(_Features.cat([*cached[:j], live, *cached[j + 1 :]], live.scale))
            (loss * loss_factor).backward()
    torch.set_rng_state(after)
    return loss, out, kd_parts


def logged_metrics(row: dict[str, float]) -> dict[str, float]:
    """What MLflow gets of a history row: the losses (CLIP-KD's terms too), lr, logit scale."""
    return {k: v for k, v in row.items() if k.startswith("loss") or k in ("lr", "logit_scale")}


class _Encoders(nn.Module):
    """The student's forward pass for one step, as one module call (what DDP wraps).

    (pixels [b, 3, S, S], tokens [b or 2b, L]) -> (image [b, D], text [b or 2b, D], image of
    the masked view [b, D] or None, the capped logit scale).
    """

    def __init__(self, student: StudentClip, mask_ratio: float | None) -> None:
        super().__init__()
        self.student = student
        self.mask_ratio = mask_ratio  # MFD's: a second image pass over a masked view

    def forward(
        self, pixels: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        s_img = self.student.encode_image(pixels)
        s_txt = self.student.encode_text(tokens)
        masked = None if self.mask_ratio is None else self.student.encode_image_masked(pixels, self.mask_ratio)
        return s_img, s_txt, masked, scale_multiplier(self.student.logit_scale)


def training_state(
    model: StudentClip,
    kd: ClipKDLoss,
    optimizer: torch.optim.Optimizer,
    cfg: StudentModelConfig,
    *,
    step: int,
    epoch: int,
    batch_in_epoch: int,
    batch_size: int,
    history: list[dict[str, float]],
) -> dict[str, Any]:
    """Everything an exact resume needs (checkpoint.pt and the resumable checkpoints alike).

    The learning rate is a function of the step (warmup + cosine), so the step is the scheduler.
    """
    return {
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        # CLIP-KD's projections, fusion layers and ICL scale (None when no KD term is on): the
        # optimiser's state covers them too, so a resume needs both.
        "kd_loss": {k: v.detach().cpu().clone() for k, v in kd.state_dict().items()} if kd.active else None,
        "optimizer": optimizer.state_dict(),
        "step": step,
        "epoch": epoch,
        "batch_in_epoch": batch_in_epoch,
        "batch_size": batch_size,
        "rng": rng_state(),
        "history": [dict(row) for row in history],
        "config": cfg.model_dump(mode="json"),
    }
