"""Samples per second: the streaming loader against what the default student's trainer consumes.

    python -m benchmarks.loader [--reinforced lake/reinforced_dataset] [--steps 8] [--seconds 10]

The trainer's consumption is params.yaml's student_model (model, batch, loss, KD terms) trained
on batches already in memory, so the figure is the optimiser's appetite alone. The loader is
``training.data.streaming`` over the published reinforced_dataset (decode, augmentation replay,
tokenising, batching), endlessly resampled so every figure is steady state, with 0 and 2
DataLoader workers; the in-memory loader (decode once, then replay per item) is shown beside it.
Needs a published reinforced_dataset (the README's first command leaves one).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from clipforge.params_file import load_params
from training.data.reinforced import ReinforcedDataset, collate
from training.data.streaming import StreamingReinforced, read_meta, shard_urls
from training.eval.timing import machine_facts
from training.models.students import build_student
from training.trainers.student import train_student


class _Prefetched(Dataset):
    """Items drawn once from the real loader, then served from memory (no decode, no replay)."""

    def __init__(self, dataset: Dataset, n: int) -> None:
        self.items = [dataset[i % len(dataset)] for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def _stream_rate(stream: StreamingReinforced, seconds: float) -> float:
    batches = stream.epoch_batches(0)
    next(batches)  # workers started, first shards open
    started, samples = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        batch = next(batches)
        samples += len(batch.get("index", ()))
    return samples / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reinforced", type=Path, default=Path("lake/reinforced_dataset"))
    parser.add_argument("--steps", type=int, default=8, help="timed trainer steps (one more untimed)")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per loader figure")
    args = parser.parse_args()
    cfg = load_params().student_model
    meta = read_meta(args.reinforced)
    tokenizer = build_student(cfg.model).tokenizer()

    memory = ReinforcedDataset.from_stage_dir(args.reinforced, tokenizer, cfg.image_size, cfg.seed)
    batch = min(cfg.batch_size, len(memory))
    prefetched = _Prefetched(memory, batch * (args.steps + 1))
    torch.manual_seed(cfg.seed)
    train_cfg = cfg.model_copy(update={"steps": args.steps + 1, "checkpoint_every": 0})
    times: list[float] = []
    result = train_student(
        build_student(cfg.model),
        prefetched,
        train_cfg,
        list(meta.teacher_dims),
        list(meta.logit_scales),
        collate=collate,
        device=torch.device("cpu"),
        after_step=lambda step: times.append(time.perf_counter()) or 0.0,
    )
    # Steps 2..N+1 (the first pays for allocation and thread start-up).
    trainer = batch * args.steps / (times[-1] - times[0])
    del result

    loader = DataLoader(memory, batch_size=batch, shuffle=True, collate_fn=collate, num_workers=0)
    started, samples = time.perf_counter(), 0
    while time.perf_counter() - started < args.seconds:
        for item in loader:  # a new epoch each pass: every item replayed again
            samples += len(item["index"])
            if time.perf_counter() - started >= args.seconds:
                break
    memory_rate = samples / (time.perf_counter() - started)

    rows = [("in-memory loader, 0 workers", memory_rate)]
    for workers in (0, 2):
        stream = StreamingReinforced(
            shard_urls(args.reinforced),
            meta,
            tokenizer,
            cfg.image_size,
            batch,
            seed=cfg.seed,
            shuffle_buffer=cfg.stream.shuffle_buffer,
            resampled=True,
            num_workers=workers,
        )
        rows.append((f"streaming loader, {workers} workers", _stream_rate(stream, args.seconds)))

    print(machine_facts())
    print(f"student {cfg.model}, batch {batch}, {cfg.image_size} px, {len(memory)} samples in {args.reinforced}")
    print("| what | samples/s | x trainer |")
    print("|---|---|---|")
    print(f"| trainer consumes (default student, batches in memory) | {trainer:.1f} | 1.00 |")
    for name, rate in rows:
        print(f"| {name} | {rate:.1f} | {rate / trainer:.2f} |")


if __name__ == "__main__":
    main()
