"""Seconds per student step with the teachers' embeddings stored versus run online.

    python -m benchmarks.online_teachers [--steps 5] [--warmup 1]

Same student (params.yaml's student_model), same batch, same loss (MobileCLIP's); one run
reads the teacher embeddings from the batch (the reinforced shards' way), the other runs the
teachers on it (CLIP-KD's online setting). Two ensembles: the embedded default's bootstrapped
pair (cf-tiny-vit-teacher + cf-tiny-resnet10t-teacher, 64 px) and one ViT-B/16-sized teacher
(open_clip's ViT-B-16 config, 224 px; random weights: only time is measured). Prints one
table: s/step stored, s/step online, and their ratio, all measured in this run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from clipforge.config import StudentModelConfig
from clipforge.params_file import load_params
from training.data.reinforced import TEACHER_PIXELS, TEACHER_TOKENS_REAL, TEACHER_TOKENS_SYN
from training.eval.timing import machine_facts
from training.models.open_clip_models import LoadedClip, as_loaded_clip, fresh_model
from training.models.students import build_student
from training.trainers.online_teachers import OnlineTeachers
from training.trainers.student import train_student

ENSEMBLES = {
    "embedded (tiny ViT + ResNet-10-T, 64 px)": ("cf-tiny-vit-teacher", "cf-tiny-resnet10t-teacher"),
    "ViT-B/16-sized (224 px)": ("ViT-B-16",),
}


def _teacher(model_name: str) -> LoadedClip:
    return as_loaded_clip(fresh_model(model_name), model_name, name=model_name, kind="clip", logit_scale=100.0)


class _Batches(Dataset):
    """Random items in the reinforced loader's layout, online-teacher keys included."""

    def __init__(self, n: int, student_size: int, student_tok: Callable, teachers: list[LoadedClip]) -> None:
        g = torch.Generator().manual_seed(0)
        dims = sum(t.embed_dim for t in teachers)
        captions = [f"a red circle number {i} on a striped blue background" for i in range(n)]
        self.items = []
        tokens = student_tok(captions)
        t_tokens = [t.tokenize(captions) for t in teachers]
        for i in range(n):
            item = {
                "pixels": torch.rand(3, student_size, student_size, generator=g),
                "tokens_real": tokens[i],
                "tokens_syn": tokens[(i + 1) % n],
                "t_img": F.normalize(torch.randn(dims, generator=g), dim=0),
                "t_txt_real": F.normalize(torch.randn(dims, generator=g), dim=0),
                "t_txt_syn": F.normalize(torch.randn(dims, generator=g), dim=0),
            }
            for k, t in enumerate(teachers):
                item[f"{TEACHER_TOKENS_REAL}{k}"] = t_tokens[k][i]
                item[f"{TEACHER_TOKENS_SYN}{k}"] = t_tokens[k][(i + 1) % n]
                if t.image_size != student_size:
                    item[f"{TEACHER_PIXELS}{k}"] = torch.rand(3, t.image_size, t.image_size, generator=g)
            self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


def seconds_per_step(
    cfg: StudentModelConfig, data: Dataset, teachers: OnlineTeachers, online: bool, warmup: int
) -> float:
    """Median seconds of the steps after ``warmup`` (the trainer's after_step hook times them)."""
    torch.manual_seed(0)
    model = build_student(cfg.model)
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(step: int) -> float:
        now = time.perf_counter()
        if step > warmup:
            times.append(now - last[0])
        last[0] = time.perf_counter()
        return 0.0

    train_student(
        model,
        data,
        cfg,
        teachers.dims,
        teachers.scales,
        device=torch.device("cpu"),
        after_step=tick,
        online_teachers=teachers if online else None,
    )
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    base = load_params().student_model
    cfg = base.model_copy(update={"steps": args.steps + args.warmup, "warmup_steps": 1, "log_every": 10**6})
    student = build_student(cfg.model)
    machine = machine_facts()
    print(
        f"machine: {machine['cpu']}, {machine['usable_cores']} usable cores, {torch.get_num_threads()} threads; "
        f"student {cfg.model} at {cfg.image_size} px, batch {cfg.batch_size}; median of {args.steps} steps"
    )
    print("| teachers | s/step stored | s/step online | online / stored |")
    print("|---|---|---|---|")
    for label, names in ENSEMBLES.items():
        teachers = [_teacher(n) for n in names]
        online = OnlineTeachers(teachers, torch.device("cpu"))
        data = _Batches(cfg.batch_size * 2, cfg.image_size, student.tokenizer(), teachers)
        stored_s = seconds_per_step(cfg, data, online, False, args.warmup)
        online_s = seconds_per_step(cfg, data, online, True, args.warmup)
        print(f"| {label} | {stored_s:.3f} | {online_s:.3f} | {online_s / stored_s:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
