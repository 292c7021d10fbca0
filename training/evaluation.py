"""The ``evaluation`` stage: zero-shot benchmark metrics, then MLflow registry promotion.

Reads the reparameterized student (``reparameterized_model/model``), the exported files
(``coreml_package``: attached to the registered version), the teacher ensemble
(``teacher_models``) and the embedded benchmark (``embedded_corpus/benchmark``) plus
``params.evaluation.extra_benchmarks``, all in clip_benchmark's webdataset layout. Writes
``metrics.json`` (flat name -> value) and a manifest with one row per model, task and metric
(docs/stages.md).

The student is read against references scored on the same tasks: each task's chance level
and every teacher plus their ensemble (``training.eval.references``); the ``references`` table
and bar chart show them side by side. Only the student's scores decide promotion.

It also times the evaluated (folded) student at batch 1 on the CPU, in PyTorch and, when
``coreml_package`` holds them, on its ONNX files in ONNX Runtime: ``latency_*_ms`` metrics and
a markdown table (the outcome's ``latency`` table). Those figures are informative, not gated: the manifest (and
its quality gate) holds benchmark scores only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from clipforge.config import Params
from clipforge.gates.rules import Suite, between, in_set
from clipforge.registry import promote_if_better
from clipforge.stage_api import MANIFEST_FILE, StageContext, StageOutcome
from training.data.benchmark import TaskSpec, list_tasks, load_task
from training.data.embedded_layout import BENCHMARK_DIR
from training.eval.references import CHANCE, ENSEMBLE, STUDENT, TeacherEnsemble, chance_metrics, pass_strings
from training.eval.report import aggregate, metrics_table, reference_chart, references_table
from training.eval.timing import example_inputs, forms_markdown, forms_record, machine_facts, onnx_towers, torch_towers
from training.eval.zeroshot import ClipLike, Tokenizer, evaluate_task
from training.models.open_clip_models import load_teachers
from training.models.students import STAGE_MODEL_DIR, STUDENT_FILE, TOWERS, StudentClip, load_student

METRICS_FILE = "metrics.json"
REFERENCE_CHART = "previews/reference_chart.png"
LATENCY_LABELS = {"torch": "PyTorch, folded", "onnx": "ONNX Runtime (coreml_package files)"}


def quality_suite(params: Params) -> Suite:
    return Suite(
        required=("model", "task", "kind", "metric", "value"),
        unique=(("model", "task", "metric"),),
        rules=(in_set("kind", ["classification", "retrieval"]), between("value", 0, 1)),
    )


def benchmark_roots(ctx: StageContext) -> list[Path]:
    """The embedded benchmark first, then each extra clip_benchmark-format folder."""
    roots = [ctx.inputs["embedded_corpus"] / BENCHMARK_DIR]
    for extra in ctx.params.evaluation.extra_benchmarks:
        path = Path(extra).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"evaluation.extra_benchmarks: {extra!r} is not a folder")
        roots.append(path)
    return roots


def gather_tasks(roots: list[Path]) -> list[TaskSpec]:
    specs: list[TaskSpec] = []
    seen: dict[str, Path] = {}
    for root in roots:
        for spec in list_tasks(root):
            if spec.name in seen:
                raise ValueError(f"task name {spec.name!r} appears in both {seen[spec.name]} and {spec.folder}")
            seen[spec.name] = spec.folder
            specs.append(spec)
    return specs


def export_files(ctx: StageContext) -> pd.DataFrame:
    """The coreml_package files (.mlpackage folders, .onnx), one row each: ``file``, ``format``,
    ``tower`` and ``path``, read from that stage's manifest (empty without the input)."""
    folder = ctx.inputs.get("coreml_package")
    if folder is None:
        return pd.DataFrame(columns=["file", "format", "tower", "path"])
    files = pd.read_parquet(folder / MANIFEST_FILE, columns=["file", "format", "tower"])
    return files.assign(path=[folder / name for name in files["file"]])


def measure_latency(ctx: StageContext, model: StudentClip) -> tuple[dict[str, float], dict[str, Any], str]:
    """Batch-1 CPU latency of ``model`` (on the CPU, eval mode): metrics, summary entry, markdown.

    Metrics: ``latency_image_ms`` / ``latency_text_ms`` (PyTorch median) and, when both ONNX
    files are there and run, ``latency_onnx_image_ms`` / ``latency_onnx_text_ms``.
    """
    cfg = ctx.params.evaluation
    threads = torch.get_num_threads()
    inputs = example_inputs(model)
    forms = {"torch": torch_towers(model, inputs, warmup=cfg.latency_warmup, repeats=cfg.latency_repeats)}
    exports = export_files(ctx)
    onnx = exports[exports["format"] == "onnx"]
    files = dict(zip(onnx["tower"], onnx["path"], strict=True))
    onnx_skipped = None
    if set(files) == set(TOWERS):
        try:
            forms["onnx"] = onnx_towers(
                files, inputs, threads=threads, warmup=cfg.latency_warmup, repeats=cfg.latency_repeats
            )
        except Exception as error:  # latency is informative: an unreadable file is noted, not fatal
            onnx_skipped = f"ONNX Runtime could not run the files: {type(error).__name__}: {error}"
    else:
        onnx_skipped = (
            f"coreml_package holds no ONNX file for the {' and '.join(sorted(set(TOWERS) - set(files)))} tower"
        )

    metrics: dict[str, float] = {}
    for form, prefix in (("torch", "latency"), ("onnx", "latency_onnx")):
        for tower, timing in forms.get(form, {}).items():
            metrics[f"{prefix}_{tower}_ms"] = timing.median_ms
    summary = {
        "batch": 1,
        "threads": threads,
        "warmup": cfg.latency_warmup,
        "repeats": cfg.latency_repeats,
        "forms": forms_record(forms),
        "onnx_skipped": onnx_skipped,
        "machine": machine_facts(),
    }
    return metrics, summary, forms_markdown(forms, LATENCY_LABELS)


def _promote(ctx: StageContext, model_dir: Path, metrics: dict[str, float]) -> dict[str, Any]:
    cfg = ctx.params.evaluation
    exports = export_files(ctx)
    base = {
        "registered_model": cfg.registered_model,
        "alias": cfg.champion_alias,
        "metric": cfg.promotion_metric,
        "exports_attached": sorted(exports["file"]),
    }
    if ctx.run_id is None:
        return {**base, "promoted": False, "version": None, "reason": "no MLflow run (tracking off): not registered"}
    if cfg.promotion_metric not in metrics:
        reason = f"promotion metric {cfg.promotion_metric!r} was not computed (no such task kind): not registered"
        return {**base, "promoted": False, "version": None, "reason": reason}
    decision = promote_if_better(
        run_id=ctx.run_id,
        model_dir=model_dir,
        extra_artifacts=dict(zip(exports["file"], exports["path"], strict=True)),
        metrics=metrics,
        registered_model=cfg.registered_model,
        metric=cfg.promotion_metric,
        alias=cfg.champion_alias,
        marker=STUDENT_FILE,
    )
    return {**base, **decision}


def reference_models(ctx: StageContext, device: str) -> list[tuple[str, ClipLike, Tokenizer, int]]:
    """Each teacher and their ensemble, as (name, model, tokenizer, image size); none without
    the ``teacher_models`` input."""
    folder = ctx.inputs.get("teacher_models")
    if folder is None:
        return []
    teachers = load_teachers(folder, device=device)
    clashing = sorted({t.name for t in teachers} & {CHANCE, STUDENT, ENSEMBLE})
    if clashing:
        raise ValueError(f"teacher names {clashing} clash with the report's own rows ({CHANCE}, {STUDENT}, {ENSEMBLE})")
    ensemble = TeacherEnsemble(teachers)
    models: list[tuple[str, ClipLike, Tokenizer, int]] = [(t.name, t, pass_strings, t.image_size) for t in teachers]
    return [*models, (ENSEMBLE, ensemble, pass_strings, ensemble.image_size)]


def run(ctx: StageContext) -> StageOutcome:
    cfg = ctx.params.evaluation
    model_dir = ctx.inputs["reparameterized_model"] / STAGE_MODEL_DIR
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_student(model_dir).eval()
    # Timed on the CPU before the model moves to the evaluation device.
    latency_metrics, latency, latency_table = measure_latency(ctx, model)
    model = model.to(device)
    scored = [(STUDENT, model, model.tokenizer(), model.info.image_size), *reference_models(ctx, device)]

    specs = gather_tasks(benchmark_roots(ctx))
    # model -> {"<task>/<metric>": value}; the student's become metrics.json's plain keys.
    per_model: dict[str, dict[str, float]] = {name: {} for name in [CHANCE, *(m[0] for m in scored)]}
    kinds: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    tasks_summary: list[dict[str, Any]] = []
    for spec in specs:
        task = load_task(spec)  # one task decoded at a time: memory stays bounded by the largest
        kinds[spec.name] = spec.type
        results = {CHANCE: chance_metrics(task)}
        for name, scored_model, tokenizer, image_size in scored:

            def progress(
                items: Iterable[Any], desc: str, total: int | None = None, _t: str = f"{name} {spec.name}"
            ) -> Iterator[Any]:
                return ctx.progress(items, f"{_t} {desc}", total)

            results[name] = evaluate_task(scored_model, tokenizer, image_size, task, cfg.batch_size, device, progress)
        for name, task_metrics in results.items():
            for metric, value in task_metrics.items():
                per_model[name][f"{spec.name}/{metric}"] = value
                rows.append(
                    {
                        "model": name,
                        "task": spec.name,
                        "kind": spec.type,
                        "metric": metric,
                        "value": value,
                        "num_samples": len(task),
                        "source": str(spec.folder),
                    }
                )
        tasks_summary.append(
            {
                "name": spec.name,
                "type": spec.type,
                "source": str(spec.folder),
                "samples": len(task),
                "skipped": task.num_skipped,
                "skip_reasons": task.skipped,
                "classes": len(task.classnames) if spec.type == "classification" else None,
                "captions": sum(len(c) for c in task.captions) if task.captions is not None else None,
            }
        )
        del task

    for scores in per_model.values():
        scores.update(aggregate(scores, kinds))
    metrics = dict(per_model[STUDENT])
    metrics.update(
        {f"{name}/{key}": v for name, scores in per_model.items() if name != STUDENT for key, v in scores.items()}
    )
    metrics.update(latency_metrics)
    (ctx.out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    ctx.tracker.log_artifact(ctx.out_dir / METRICS_FILE)
    table = metrics_table(per_model[STUDENT], kinds)
    references = references_table(per_model, kinds)
    reference_chart(per_model, kinds, ctx.out_dir / REFERENCE_CHART)
    registry = _promote(ctx, model_dir, metrics)
    # Beside the report: the decision on the MLflow run itself, searchable in the UI.
    ctx.tracker.set_tags(
        {
            "clipforge.registry.version": str(registry["version"]),
            "clipforge.registry.promoted": str(registry["promoted"]).lower(),
            "clipforge.registry.reason": registry["reason"],
        }
    )

    summary = {
        "model": str(model_dir),
        "device": device,
        "tasks": tasks_summary,
        "samples_skipped": sum(t["skipped"] for t in tasks_summary),
        "references": [name for name in per_model if name != STUDENT],
        "latency": latency,
        "registry": registry,
    }
    manifest = pd.DataFrame(rows, columns=["model", "task", "kind", "metric", "value", "num_samples", "source"])
    return StageOutcome(
        manifest=manifest,
        summary=summary,
        metrics=metrics,
        tables={"metrics": table, "references": references, "latency": latency_table},
        previews={"references": REFERENCE_CHART},
    )
