"""The ``evaluation`` stage: zero-shot benchmark metrics, then MLflow registry promotion.

Reads the reparameterized student (``reparameterized_model/model``), the exported files
(``coreml_package``: attached to the registered version) and the embedded benchmark
(``embedded_corpus/benchmark``) plus ``params.evaluation.extra_benchmarks``, all in
clip_benchmark's webdataset layout. Writes ``metrics.json`` (flat name -> value) and a
manifest with one row per task and metric (docs/stages.md).

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
from training.eval.timing import example_inputs, forms_markdown, forms_record, machine_facts, onnx_towers, torch_towers
from training.eval.zeroshot import evaluate_task
from training.models.students import STAGE_MODEL_DIR, STUDENT_FILE, TOWERS, StudentClip, load_student

METRICS_FILE = "metrics.json"
CLASSIFICATION_METRICS = ("top1", "top5", "mean_per_class_recall")
RETRIEVAL_METRICS = ("image_r1", "image_r5", "image_r10", "text_r1", "text_r5", "text_r10")
LATENCY_LABELS = {"torch": "PyTorch, folded", "onnx": "ONNX Runtime (coreml_package files)"}


def quality_suite(params: Params) -> Suite:
    return Suite(
        required=("task", "kind", "metric", "value"),
        unique=(("task", "metric"),),
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


def aggregate(metrics: dict[str, float], kinds: dict[str, str]) -> dict[str, float]:
    """``zeroshot_top1_mean`` over classification tasks, ``retrieval_mean_r1`` (mean of image and
    text R@1, averaged over retrieval tasks); each present only when such tasks exist."""
    out: dict[str, float] = {}
    cls = [metrics[f"{t}/top1"] for t, k in kinds.items() if k == "classification"]
    ret = [(metrics[f"{t}/image_r1"] + metrics[f"{t}/text_r1"]) / 2 for t, k in kinds.items() if k == "retrieval"]
    if cls:
        out["zeroshot_top1_mean"] = sum(cls) / len(cls)
    if ret:
        out["retrieval_mean_r1"] = sum(ret) / len(ret)
    return out


def metrics_table(metrics: dict[str, float], kinds: dict[str, str]) -> str:
    """Markdown: one table per task kind, then the aggregates."""
    lines: list[str] = []
    cls_tasks = [t for t, k in kinds.items() if k == "classification"]
    ret_tasks = [t for t, k in kinds.items() if k == "retrieval"]
    if cls_tasks:
        lines += ["| task | top-1 | top-5 | mean per-class recall |", "|---|---|---|---|"]
        lines += [
            f"| {t} | " + " | ".join(f"{metrics[f'{t}/{m}']:.4f}" for m in CLASSIFICATION_METRICS) + " |"
            for t in cls_tasks
        ]
        lines.append("")
    if ret_tasks:
        lines += [
            "| task | text→image R@1 | R@5 | R@10 | image→text R@1 | R@5 | R@10 |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {t} | " + " | ".join(f"{metrics[f'{t}/{m}']:.4f}" for m in RETRIEVAL_METRICS) + " |" for t in ret_tasks
        ]
        lines.append("")
    for name in ("zeroshot_top1_mean", "retrieval_mean_r1"):
        if name in metrics:
            lines.append(f"**{name}**: {metrics[name]:.4f}  ")
    return "\n".join(lines).rstrip()


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


def run(ctx: StageContext) -> StageOutcome:
    cfg = ctx.params.evaluation
    model_dir = ctx.inputs["reparameterized_model"] / STAGE_MODEL_DIR
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_student(model_dir).eval()
    # Timed on the CPU before the model moves to the evaluation device.
    latency_metrics, latency, latency_table = measure_latency(ctx, model)
    model = model.to(device)
    tokenizer = model.tokenizer()
    image_size = model.info.image_size

    specs = gather_tasks(benchmark_roots(ctx))
    metrics: dict[str, float] = {}
    kinds: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    tasks_summary: list[dict[str, Any]] = []
    for spec in specs:
        task = load_task(spec)  # one task decoded at a time: memory stays bounded by the largest

        def progress(items: Iterable[Any], desc: str, total: int | None = None, _t: str = spec.name) -> Iterator[Any]:
            return ctx.progress(items, f"{_t} {desc}", total)

        task_metrics = evaluate_task(model, tokenizer, image_size, task, cfg.batch_size, device, progress)
        kinds[spec.name] = spec.type
        for metric, value in task_metrics.items():
            metrics[f"{spec.name}/{metric}"] = value
            rows.append(
                {
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

    metrics.update(aggregate(metrics, kinds))
    metrics.update(latency_metrics)
    (ctx.out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    ctx.tracker.log_artifact(ctx.out_dir / METRICS_FILE)
    table = metrics_table(metrics, kinds)
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
        "latency": latency,
        "registry": registry,
    }
    manifest = pd.DataFrame(rows, columns=["task", "kind", "metric", "value", "num_samples", "source"])
    return StageOutcome(
        manifest=manifest,
        summary=summary,
        metrics=metrics,
        tables={"metrics": table, "latency": latency_table},
    )
