"""``clipforge benchmark latency``: batch-1 CPU latency of MobileCLIP variants against ViT-B/16.

Per variant (randomly initialised: latency does not depend on the weights), each tower is
timed in four forms: PyTorch train-form (eval mode, multi-branch blocks unfolded), PyTorch
folded (``export.reparameterize``), and the ONNX Runtime files ``export.onnx_export`` writes
from each (to a temporary folder). The baseline is an OpenAI-style CLIP built with
``open_clip.create_model(baseline)`` in the same process (ViT-B-16 by default, as in the
MobileCLIP paper's comparison; nothing to fold), timed in PyTorch and ONNX Runtime.

Inputs are one image [1, 3, S, S] at the model's resolution and one caption [1, context_length];
the stopwatch is ``training.eval.timing`` (warmup, then median and p90 over the timed calls).
Speedup of a form = baseline image + text median in the same runtime / the form's image + text
median. The figures are only comparable within one run on one quiet machine: the JSON keeps
the machine facts and thread counts with them.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipforge.progress import Progress, no_progress
from export.onnx_export import export_image_onnx, export_text_onnx
from export.package import files_for
from export.reparameterize import reparameterize
from training.eval.timing import (
    FORM_LABELS,
    Timing,
    example_inputs,
    forms_record,
    machine_facts,
    onnx_towers,
    torch_towers,
    usable_cores,
)
from training.models.mobileclip.variants import ALIASES
from training.models.students import STUDENT_REGISTRY, StudentClip, build_student, open_clip_student, tower_params

DEFAULT_VARIANTS = ("nano", "S0", "S1", "S2", "B")
DEFAULT_BASELINE = "ViT-B-16"
DEFAULT_JSON = Path("reports/latency.json")
# Which baseline form a variant's form is compared with: the same runtime.
RUNTIME_OF = {"torch": "torch", "torch_folded": "torch", "onnx": "onnx", "onnx_folded": "onnx"}


@dataclass(frozen=True)
class LatencySettings:
    # The ONNX opset the files are exported with: coreml_package.onnx_opset, as the stage does.
    opset: int
    warmup: int = 5
    repeats: int = 20
    threads: int = field(default_factory=usable_cores)  # torch and ORT intra-op

    def __post_init__(self) -> None:
        if self.threads < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"need threads >= 1, repeats >= 1, warmup >= 0: {self}")


def _onnx_forms(
    student: StudentClip, inputs: dict[str, torch.Tensor], folder: Path, settings: LatencySettings
) -> dict[str, Timing]:
    """Export both towers of ``student`` into ``folder`` and time the files in ONNX Runtime."""
    files = {entry.tower: folder / entry.file for entry in files_for(["onnx"])}
    export_image_onnx(student, files["image"], opset=settings.opset)
    export_text_onnx(student, files["text"], opset=settings.opset)
    return onnx_towers(files, inputs, threads=settings.threads, warmup=settings.warmup, repeats=settings.repeats)


def _torch_forms(student: StudentClip, inputs: dict[str, torch.Tensor], settings: LatencySettings) -> dict[str, Timing]:
    return torch_towers(student, inputs, warmup=settings.warmup, repeats=settings.repeats)


def _model_record(name: str, student: StudentClip) -> dict[str, Any]:
    image, text = tower_params(student.clip)
    return {
        "name": name,
        "image_size": student.info.image_size,
        "context_length": student.info.context_length,
        "params_m": {"image": image / 1e6, "text": text / 1e6},
    }


def measure_model(
    name: str, student: StudentClip, settings: LatencySettings, work_dir: Path, *, fold: bool
) -> dict[str, Any]:
    """One model's record: sizes and, per form, per-tower timings plus the image + text total.

    ``fold`` adds the folded forms (a copy folded by ``export.reparameterize``); the train-form
    forms time ``student`` itself in eval mode.
    """
    student = student.eval()
    inputs = example_inputs(student)
    forms = {"torch": _torch_forms(student, inputs, settings)}
    forms["onnx"] = _onnx_forms(student, inputs, work_dir / "train", settings)
    record = _model_record(name, student)
    if fold:
        folded, counts = reparameterize(student)
        forms["torch_folded"] = _torch_forms(folded, inputs, settings)
        forms["onnx_folded"] = _onnx_forms(folded, inputs, work_dir / "folded", settings)
        record["folded_blocks"] = counts
    record["forms"] = forms_record({form: forms[form] for form in FORM_LABELS if form in forms})
    return record


def add_speedups(variant: dict[str, Any], baseline: dict[str, Any]) -> None:
    """Per form: baseline image + text median in the same runtime / the form's image + text median."""
    variant["speedup_vs_baseline"] = {
        form: baseline["forms"][RUNTIME_OF[form]]["total_ms"] / record["total_ms"]
        for form, record in variant["forms"].items()
    }


def resolve_variants(variants: list[str]) -> list[str]:
    """Student registry names; MobileCLIP aliases (``nano``, ``S0`` ...) resolve to theirs.

    Raises KeyError for an unknown name (before any timing, not after the baseline's).
    """
    names = [ALIASES.get(v, v) for v in variants]
    unknown = [v for v, name in zip(variants, names, strict=True) if name not in STUDENT_REGISTRY]
    if unknown:
        raise KeyError(f"unknown student variant(s) {unknown}; known: {sorted(STUDENT_REGISTRY)} or {sorted(ALIASES)}")
    return names


def run_benchmark(
    variants: list[str],
    *,
    baseline: str = DEFAULT_BASELINE,
    settings: LatencySettings,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Every figure of one run, JSON-ready: machine, settings, the baseline and each variant.

    ``variants`` are student registry names or MobileCLIP aliases; ``baseline`` an open_clip
    model name. Threads are set for the run and restored afterwards.
    """
    names = resolve_variants(variants)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        with tempfile.TemporaryDirectory(prefix="clipforge-latency-") as tmp:
            for _ in progress([baseline], "timing baseline", 1):
                torch.manual_seed(0)
                base = measure_model(
                    baseline, open_clip_student(baseline, baseline), settings, Path(tmp) / "baseline", fold=False
                )
            records = []
            for index, name in enumerate(progress(names, "timing variant", len(names))):
                torch.manual_seed(0)
                record = measure_model(name, build_student(name), settings, Path(tmp) / f"variant{index}", fold=True)
                add_speedups(record, base)
                records.append(record)
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "machine": machine_facts(),
        "settings": {
            **asdict(settings),
            "batch": 1,
            "torch_threads": settings.threads,
            "onnxruntime_intra_op_threads": settings.threads,
            "statistic": "median and p90 of the timed calls, milliseconds",
            "speedup": "baseline image + text median (same runtime) / variant image + text median",
        },
        "baseline": base,
        "variants": records,
    }


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))


def _params(record: dict[str, Any]) -> str:
    return f"{record['params_m']['image']:.1f} + {record['params_m']['text']:.1f}"


def _ms(form: dict[str, Any], tower: str) -> str:
    return f"{form[tower]['median_ms']:.2f} ({form[tower]['p90_ms']:.2f})"


def render_table(result: dict[str, Any]) -> str:
    """Plain text, one line per model and form: median (p90) ms per tower, total, speedup."""
    records = [result["baseline"], *result["variants"]]
    width = max(len(record["name"]) for record in records)
    header = (
        f"{'model':{width}s} {'params M img + txt':>18s}  {'form':21s} {'image ms (p90)':>16s} "
        f"{'text ms (p90)':>16s} {'total ms':>9s} {'speedup':>8s}"
    )
    lines = [header, "-" * len(header)]
    for record in records:
        speedups = record.get("speedup_vs_baseline", {})
        for index, (form, timings) in enumerate(record["forms"].items()):
            name, params = (record["name"], _params(record)) if index == 0 else ("", "")
            speedup = f"{speedups[form]:.2f}x" if form in speedups else "1.00x"
            lines.append(
                f"{name:{width}s} {params:>18s}  {FORM_LABELS[form]:21s} {_ms(timings, 'image'):>16s} "
                f"{_ms(timings, 'text'):>16s} {timings['total_ms']:9.2f} {speedup:>8s}"
            )
    return "\n".join(lines)


def render_markdown(result: dict[str, Any]) -> str:
    """README/MLflow table: folded forms of each variant (train-form for the baseline), median ms."""
    baseline = result["baseline"]
    lines = [
        "| model | params M (image + text) | resolution | PyTorch image + text ms | PyTorch speedup "
        "| ONNX Runtime image + text ms | ONNX Runtime speedup |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(record: dict[str, Any], torch_form: str, onnx_form: str) -> str:
        forms, speedups = record["forms"], record.get("speedup_vs_baseline", {})
        cells = []
        for form in (torch_form, onnx_form):
            timing = forms[form]
            cells.append(f"{timing['image']['median_ms']:.2f} + {timing['text']['median_ms']:.2f}")
            cells.append(f"{speedups.get(form, 1.0):.2f}x")
        return (
            f"| {record['name']} | {_params(record)} | {record['image_size']} | "
            f"{cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |"
        )

    lines.append(row(baseline, "torch", "onnx"))
    lines += [row(record, "torch_folded", "onnx_folded") for record in result["variants"]]
    machine, settings = result["machine"], result["settings"]
    lines += [
        "",
        f"Batch 1, median of {settings['repeats']} runs after {settings['warmup']} warmup runs; "
        f"{settings['torch_threads']} threads on {machine['cpu']} ({machine['logical_cores']} logical cores); "
        f"torch {machine['torch']}, onnxruntime {machine['onnxruntime']}. Variants folded; "
        f"speedup = {baseline['name']} image + text / variant image + text, same runtime.",
    ]
    return "\n".join(lines)
