"""Batch-1 CPU latency of a student's encoders, in PyTorch and in ONNX Runtime.

A stopwatch, not a benchmark: ``time_calls`` runs a call ``warmup`` times untimed, then
``repeats`` times timed, and keeps the median and 90th percentile in milliseconds. The
evaluation stage times the student it evaluates with it; ``export.latency_benchmark`` builds the variant
benchmark (train-form vs folded, against a ViT-B/16 baseline) on top. It lives in ``training/``
because the evaluation stage may not import ``export/``.

PyTorch runs under ``torch.inference_mode()`` with the process's ``torch.get_num_threads()``;
an ONNX Runtime session gets the same number of intra-op threads (one inter-op thread,
sequential execution), so both runtimes see the same cores.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.models.students import TOWERS, StudentClip

# Forms a tower is timed in: train-form (eval mode, unfolded) or folded, PyTorch or ONNX Runtime.
FORM_LABELS = {
    "torch": "PyTorch",
    "torch_folded": "PyTorch, folded",
    "onnx": "ONNX Runtime",
    "onnx_folded": "ONNX Runtime, folded",
}
# A real caption: EOT pooling and padding behave as in use (latency does not depend on the words).
LATENCY_CAPTION = "a photo of a dog playing in the snow"
# ONNX Runtime input type -> numpy dtype of the feed (the exported text encoders take int32).
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call over ``repeats`` timed calls (after ``warmup`` untimed ones)."""

    median_ms: float
    p90_ms: float
    repeats: int
    warmup: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def time_calls(call: Callable[[], object], *, warmup: int, repeats: int) -> Timing:
    """Wall-clock milliseconds of ``call()``, one sample per call (batch 1: no averaging inside)."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        call()
    samples_ms = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        call()
        samples_ms.append((time.perf_counter_ns() - started) / 1e6)
    return Timing(
        median_ms=float(statistics.median(samples_ms)),
        p90_ms=float(np.percentile(samples_ms, 90)),
        repeats=repeats,
        warmup=warmup,
    )


def example_inputs(student: StudentClip) -> dict[str, torch.Tensor]:
    """Batch-1 inputs: ``image`` [1, 3, S, S] in [0, 1], ``text`` [1, context_length] token ids."""
    size = student.info.image_size
    pixels = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return {"image": pixels, "text": student.tokenizer()([LATENCY_CAPTION])}


def torch_timing(student: StudentClip, tower: str, example: torch.Tensor, *, warmup: int, repeats: int) -> Timing:
    """One tower of an eval-mode student in PyTorch (no autograd bookkeeping)."""
    encode = student.encode_image if tower == "image" else student.encode_text
    with torch.inference_mode():
        return time_calls(lambda: encode(example), warmup=warmup, repeats=repeats)


def onnx_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_timing(path: Path, example: torch.Tensor, *, threads: int, warmup: int, repeats: int) -> Timing:
    """An exported encoder file (one input, e.g. ``image`` or ``tokens``) in ONNX Runtime (CPU)."""
    session = onnx_session(path, threads)
    (model_input,) = session.get_inputs()
    if model_input.type not in _ORT_DTYPES:
        raise ValueError(f"{path.name}: unsupported input type {model_input.type}")
    feed = {model_input.name: example.numpy().astype(_ORT_DTYPES[model_input.type])}
    return time_calls(lambda: session.run(None, feed), warmup=warmup, repeats=repeats)


def usable_cores() -> int:
    """Cores this process may run on (a container or taskset may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def machine_facts() -> dict[str, Any]:
    """What the figures depend on besides the thread counts: CPU, cores, library versions."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def total_ms(timings: dict[str, Timing]) -> float:
    """Image + text median: the cost of embedding one image and one caption."""
    return sum(timings[tower].median_ms for tower in TOWERS)


def torch_towers(
    student: StudentClip, inputs: dict[str, torch.Tensor], *, warmup: int, repeats: int
) -> dict[str, Timing]:
    """Both towers of an eval-mode student in PyTorch, on ``example_inputs``."""
    return {t: torch_timing(student, t, inputs[t], warmup=warmup, repeats=repeats) for t in TOWERS}


def onnx_towers(
    files: dict[str, Path], inputs: dict[str, torch.Tensor], *, threads: int, warmup: int, repeats: int
) -> dict[str, Timing]:
    """Both exported encoder files (tower -> .onnx) in ONNX Runtime, on ``example_inputs``."""
    return {t: onnx_timing(files[t], inputs[t], threads=threads, warmup=warmup, repeats=repeats) for t in TOWERS}


def forms_record(forms: dict[str, dict[str, Timing]]) -> dict[str, dict[str, Any]]:
    """JSON-ready: form -> {tower: timing fields, ``total_ms``: image + text median}."""
    return {
        form: {**{t: timing.to_dict() for t, timing in towers.items()}, "total_ms": total_ms(towers)}
        for form, towers in forms.items()
    }


def forms_markdown(forms: dict[str, dict[str, Timing]], labels: dict[str, str] = FORM_LABELS) -> str:
    """Markdown: one row per form, median (p90) ms per tower and the image + text total."""
    lines = ["| form | image ms, median (p90) | text ms, median (p90) | image + text ms |", "|---|---|---|---|"]
    for form, timings in forms.items():
        cells = [f"{timings[t].median_ms:.2f} ({timings[t].p90_ms:.2f})" for t in TOWERS]
        lines.append(f"| {labels.get(form, form)} | {cells[0]} | {cells[1]} | {total_ms(timings):.2f} |")
    return "\n".join(lines)
