"""The chain: which stages exist, what each reads, and the one runner that executes a stage.

Dagster assets (``assets/``) and DVC stages (``clipforge <stage>``) both call
:func:`run_stage`, so a stage has exactly one implementation and two ways to run it.
Implementations are imported lazily by dotted path: the CLI and the Dagster code location
load quickly and only the stage that runs pays for torch.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipforge.config import Params
from clipforge.stage_api import GateResult, StageContext, StageOutcome

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.parquet"
REPORT_FILE = "report.json"


@dataclass(frozen=True)
class StageSpec:
    name: str
    # "module:function" of the implementation, imported when the stage runs.
    entrypoint: str
    # Upstream stages whose published folders this stage reads.
    inputs: tuple[str, ...]
    # params.yaml sections the stage depends on (DVC params deps; MLflow params).
    sections: tuple[str, ...]
    description: str

    def load(self) -> Callable[[StageContext], StageOutcome]:
        module_name, _, func_name = self.entrypoint.partition(":")
        return getattr(importlib.import_module(module_name), func_name)


CHAIN: tuple[StageSpec, ...] = (
    StageSpec(
        "embedded_corpus",
        "pipelines.embedded_corpus:run",
        (),
        ("embedded_corpus",),
        "Generated DataComp-format pool, clean teacher corpus and held-out benchmark (no network).",
    ),
    StageSpec(
        "datacomp_pool",
        "pipelines.datacomp_pool:run",
        ("embedded_corpus",),
        ("datacomp_pool",),
        "Ingest a DataComp-format pool (local or S3): per-sample manifest, bad samples skipped and counted.",
    ),
    StageSpec(
        "teacher_models",
        "training.bootstrap:run_teachers",
        ("embedded_corpus",),
        ("teacher_models",),
        "Resolve the CLIP teacher ensemble, or bootstrap it on the clean teacher corpus.",
    ),
    StageSpec(
        "captioner_model",
        "training.bootstrap:run_captioner",
        ("embedded_corpus",),
        ("captioner_model",),
        "Resolve the CoCa captioner, or bootstrap a small one on the clean teacher corpus.",
    ),
    StageSpec(
        "filtered_pool",
        "pipelines.filtered_pool:run",
        ("datacomp_pool", "teacher_models"),
        ("filtered_pool",),
        "DataComp basic filter and CLIP-score filter scored with the teachers.",
    ),
    StageSpec(
        "synthetic_captions",
        "pipelines.synthetic_captions:run",
        ("filtered_pool", "captioner_model"),
        ("synthetic_captions",),
        "CoCa synthetic captions with nucleus sampling, S per image.",
    ),
    StageSpec(
        "reinforced_dataset",
        "pipelines.reinforced_dataset:run",
        ("filtered_pool", "synthetic_captions", "teacher_models"),
        ("reinforced_dataset",),
        "Stored augmentations and teacher-ensemble embeddings, DataCompDR webdataset shards.",
    ),
    StageSpec(
        "student_model",
        "training.student_model:run",
        ("reinforced_dataset",),
        ("student_model",),
        "Train the student with the MobileCLIP reinforced loss from stored teacher embeddings.",
    ),
    StageSpec(
        "reparameterized_model",
        "export.reparameterize:run",
        ("student_model",),
        ("reparameterized_model",),
        "Fold train-time branches into single convolutions and check outputs match.",
    ),
    StageSpec(
        "coreml_package",
        "export.package:run",
        ("reparameterized_model",),
        ("coreml_package",),
        "Core ML image and text packages and ONNX files, verified.",
    ),
    StageSpec(
        "evaluation",
        "training.evaluation:run",
        ("reparameterized_model", "coreml_package", "embedded_corpus"),
        ("evaluation",),
        "Zero-shot classification and retrieval on the benchmark; MLflow registry promotion.",
    ),
)

STAGES: dict[str, StageSpec] = {spec.name: spec for spec in CHAIN}


class GateFailed(RuntimeError):
    """A stage's quality gate failed (raised by the CLI path; Dagster shows it as a check)."""


class UpstreamGateFailed(GateFailed):
    """An input stage's published output did not pass its quality gate."""


@dataclass
class StageReport:
    stage: str
    location: str
    summary: dict[str, Any]
    metrics: dict[str, float]
    gate: GateResult
    seconds: float
    mlflow_run_id: str | None
    # Label -> local file of a preview image (sample grid, loss curve).
    previews: dict[str, Path] = field(default_factory=dict)
    manifest_rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "location": self.location,
            "summary": self.summary,
            "metrics": self.metrics,
            "gate": self.gate.to_dict(),
            "seconds": round(self.seconds, 2),
            "mlflow_run_id": self.mlflow_run_id,
            "previews": {k: str(v) for k, v in self.previews.items()},
            "manifest_rows": self.manifest_rows,
        }


def read_report(folder: Path) -> dict[str, Any]:
    path = folder / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {REPORT_FILE} in {folder}")
    return json.loads(path.read_text())


def _resolve_inputs(spec: StageSpec, lake: Any) -> dict[str, Path]:
    inputs: dict[str, Path] = {}
    for upstream in spec.inputs:
        folder = lake.stage_dir(upstream)
        gate = read_report(folder).get("gate", {})
        if not gate.get("passed", False):
            failed = [c.get("reason", "?") for c in gate.get("checks", []) if not c.get("success")]
            raise UpstreamGateFailed(
                f"stage {spec.name!r} refuses input {upstream!r}: its quality gate failed ({'; '.join(failed)})"
            )
        inputs[upstream] = folder
    return inputs


def run_stage(
    name: str,
    params: Params,
    *,
    show_progress: bool = True,
    report_dir: Path | None = Path("reports"),
    metrics_dir: Path | None = Path("metrics"),
    track: bool = True,
) -> StageReport:
    """Run one stage end to end: inputs from the lake, MLflow run, atomic publish, gate."""
    from clipforge import quality, tracking
    from clipforge.lake import Lake

    spec = STAGES[name]
    started = time.perf_counter()
    lake = Lake(params.lake)
    inputs = _resolve_inputs(spec, lake)
    implementation = spec.load()

    with contextlib.ExitStack() as stack:
        tracker = None
        if track:
            tracker = stack.enter_context(
                tracking.stage_run(params.mlflow, name, {"clipforge.profile": params.profile})
            )
            tracker.log_params({s: params.model_dump(mode="json")[s] for s in spec.sections})
        with lake.publish(name) as out_dir:
            ctx = StageContext(
                name=name,
                params=params,
                inputs=inputs,
                out_dir=out_dir,
                show_progress=show_progress,
                run_id=tracker.run_id if tracker is not None else None,
            )
            if tracker is not None:
                ctx.tracker = tracker
            outcome = implementation(ctx)
            outcome.manifest.to_parquet(out_dir / MANIFEST_FILE, index=False)
            gate = quality.run_gate(name, outcome.manifest, params)
            seconds = time.perf_counter() - started
            report = StageReport(
                stage=name,
                location=lake.describe(name),
                summary=outcome.summary,
                metrics=outcome.metrics,
                gate=gate,
                seconds=seconds,
                mlflow_run_id=ctx.run_id,
                manifest_rows=len(outcome.manifest),
            )
            report_dict = report.to_dict()
            report_dict["previews"] = dict(outcome.previews)
            (out_dir / REPORT_FILE).write_text(json.dumps(report_dict, indent=2, default=str))
            if tracker is not None:
                tracker.log_metrics(
                    {**outcome.metrics, "stage_seconds": seconds, "manifest_rows": len(outcome.manifest)}
                )
                tracker.log_metrics({"gate_passed": float(gate.passed)})
                tracker.log_artifact(out_dir / REPORT_FILE)
                for rel in outcome.previews.values():
                    tracker.log_artifact(out_dir / rel, artifact_path="previews")
        published = lake.stage_dir(name)
        report.previews = {label: published / rel for label, rel in outcome.previews.items()}

    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / f"{name}.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    if metrics_dir is not None and outcome.metrics:
        # DVC metrics files (dvc.yaml declares them with cache: false): `dvc metrics show/diff`.
        metrics_dir.mkdir(parents=True, exist_ok=True)
        (metrics_dir / f"{name}.json").write_text(json.dumps(outcome.metrics, indent=2, sort_keys=True))
    return report
