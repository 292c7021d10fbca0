"""Trainer samples/s against open_clip_train (it ships in open_clip_torch) on the same model,
data, batch and loss.

    python -m benchmarks.trainer [--reinforced lake/reinforced_dataset] [--steps 12] [--model tiny-vit]

Model: an open_clip config both trainers build (the ``tiny-vit`` student is open_clip's
``cf-tiny-vit-student``). Data: the published reinforced_dataset's shards (``jpg`` + ``txt``:
open_clip_train reads them as its webdataset, our trainer as the reinforced dataset). Loss:
plain CLIP on the real captions (student_model.distill_lambda 0, no synthetic captions, no KD).
Both run in this process, with the same threads, data loading in the process (0 workers),
float32, one epoch's steps; the first two steps of each are left out (warm-up). Prints one
table of samples/s and the ratio, all measured in this run.
"""

from __future__ import annotations

import argparse
import functools
import re
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from clipforge.params_file import load_params
from training.data.reinforced import ReinforcedDataset, collate
from training.data.streaming import read_meta, shard_urls
from training.eval.timing import machine_facts
from training.models.students import build_student
from training.trainers.student import train_student

WARMUP_STEPS = 2
# open_clip_train's progress line: "... Batch (t): 0.512, 187.4/s, ..." (the meter's average).
_BATCH_TIME = re.compile(r"Batch \(t\): ([0-9.]+)")


def _ours(args: argparse.Namespace, batch: int) -> float:
    cfg = load_params().student_model.model_copy(
        update={
            "model": args.model,
            "steps": args.steps,
            "batch_size": batch,
            "distill_lambda": 0.0,
            "use_synthetic_captions": False,
            "kd": load_params().student_model.kd.model_copy(update={"fd": 0.0, "crd": 0.0, "icl": 0.0}),
            "checkpoint_every": 0,
            "num_workers": 0,
            "precision": "fp32",
        }
    )
    model = build_student(cfg.model)
    dataset = ReinforcedDataset.from_stage_dir(args.reinforced, model.tokenizer(), model.info.image_size, cfg.seed)
    meta = dataset.meta
    times: list[float] = []
    train_student(
        model,
        dataset,
        cfg,
        list(meta.teacher_dims),
        list(meta.logit_scales),
        collate=collate,
        device=torch.device("cpu"),
        after_step=lambda step: times.append(time.perf_counter()) or 0.0,
    )
    return batch * (len(times) - 1 - WARMUP_STEPS) / (times[-1] - times[WARMUP_STEPS])


def _open_clip_train(args: argparse.Namespace, batch: int, samples: int, open_clip_name: str) -> float:
    import open_clip_train.data
    from open_clip_train.main import main as open_clip_main
    from webdataset.tariterators import tar_file_expander

    # open_clip_train 3.3's sample grouper predates webdataset 1.0's end-of-shard markers (an
    # empty dict after each shard, which it reads as a file): expand the tars without them.
    open_clip_train.data.tar_file_expander = functools.partial(tar_file_expander, eof_value=None)

    urls = shard_urls(args.reinforced)
    with tempfile.TemporaryDirectory() as logs:
        argv = [
            "--train-data", "::".join(urls),
            "--dataset-type", "webdataset",
            "--train-num-samples", str(samples),
            "--model", open_clip_name,
            "--batch-size", str(batch),
            "--epochs", "1",
            "--workers", "0",
            "--precision", "fp32",
            "--lr", "1e-3",
            "--warmup", "1",
            "--log-every-n-steps", "1",
            "--save-frequency", "0",
            "--report-to", "",
            "--logs", logs,
            "--name", "bench",
            "--seed", "0",
            "--device", "cpu",
        ]  # fmt: skip
        open_clip_main(argv)
        log = (Path(logs) / "bench" / "out.log").read_text()
    # Each line's figure is the running mean since the meter's last reset (every log step).
    seconds = [float(m.group(1)) for m in _BATCH_TIME.finditer(log)]
    timed = seconds[WARMUP_STEPS:]
    return batch * len(timed) / sum(timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reinforced", type=Path, default=Path("lake/reinforced_dataset"))
    parser.add_argument("--model", default="tiny-vit", help="a student variant backed by an open_clip config")
    parser.add_argument("--batch", type=int, default=96)
    args = parser.parse_args()
    student = build_student(args.model)
    # open_clip students are built from the open_clip config their tokenizer is named after.
    open_clip_name = student.info.tokenizer
    if not isinstance(student.clip, open_clip.CLIP) or open_clip.get_model_config(open_clip_name) is None:
        raise SystemExit(f"{args.model!r} is not an open_clip model; open_clip_train cannot build it")
    samples = ReinforcedDataset.from_stage_dir(args.reinforced, student.tokenizer(), student.info.image_size).__len__()
    steps = samples // args.batch  # one epoch for both
    args.steps = steps
    ours = _ours(args, args.batch)
    theirs = _open_clip_train(args, args.batch, steps * args.batch, open_clip_name)
    print(machine_facts())
    print(f"model {args.model} (open_clip {open_clip_name}), batch {args.batch}, {steps} steps, plain CLIP loss, fp32")
    print(f"torch threads {torch.get_num_threads()}, data in-process, {read_meta(args.reinforced).teachers}")
    print("| trainer | samples/s | x open_clip_train |")
    print("|---|---|---|")
    print(f"| open_clip_train | {theirs:.1f} | 1.00 |")
    print(f"| clipforge train_student | {ours:.1f} | {ours / theirs:.2f} |")


if __name__ == "__main__":
    main()
