"""The one runner that executes a stage: inputs from the lake, MLflow run, atomic publish, gate.

Dagster assets (``assets/``) and DVC stages (``clipforge <stage>``) both call
:func:`run_stage`, so a stage has exactly one implementation and two ways to run it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chain.spec import STAGES
from clipforge import tracking
from clipforge.config import Params
from clipforge.gates import GateResult, run_gate
from clipforge.lake import Lake, open_lake
from clipforge.stage_api import MANIFEST_FILE, REPORT_FILE, DeclaredParams, StageContext

log = logging.getLogger(__name__)


class GateFailed(RuntimeError):
    """A quality gate failed; the CLI turns it into exit code 3 (Dagster shows a failed gate as a check)."""


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
    # Label -> markdown table (StageOutcome.tables).
    tables: dict[str, str] = field(default_factory=dict)
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
            "tables": self.tables,
            "manifest_rows": self.manifest_rows,
        }


def read_report(folder: Path) -> dict[str, Any]:
    path = folder / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {REPORT_FILE} in {folder}")
    return json.loads(path.read_text())


def resolve_inputs(consumer: str, upstreams: Sequence[str], lake: Lake) -> dict[str, Path]:
    """The published folders of ``upstreams``, refusing any whose quality gate failed."""
    inputs: dict[str, Path] = {}
    for upstream in upstreams:
        folder = lake.stage_dir(upstream)
        gate = read_report(folder).get("gate", {})
        if not gate.get("passed", False):
            failed = [c.get("reason", "?") for c in gate.get("checks", []) if not c.get("success")]
            raise UpstreamGateFailed(
                f"stage {consumer!r} refuses input {upstream!r}: its quality gate failed ({'; '.join(failed)})"
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
    spec = STAGES[name]
    started = time.perf_counter()
    lake = open_lake(params.lake)
    inputs = resolve_inputs(spec.name, spec.inputs, lake)
    implementation = spec.load()
    stage_params = DeclaredParams(params, name, spec.sections)

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
                params=stage_params,  # type: ignore[arg-type]  # Params, narrowed to the declared sections
                inputs=inputs,
                out_dir=out_dir,
                show_progress=show_progress,
                run_id=tracker.run_id if tracker is not None else None,
            )
            if tracker is not None:
                ctx.tracker = tracker
            outcome = implementation(ctx)
            outcome.manifest.to_parquet(out_dir / MANIFEST_FILE, index=False)
            gate = run_gate(name, spec.quality_suite(stage_params), outcome.manifest)
            seconds = time.perf_counter() - started
            report = StageReport(
                stage=name,
                location=lake.describe(name),
                summary=outcome.summary,
                metrics=outcome.metrics,
                gate=gate,
                seconds=seconds,
                mlflow_run_id=ctx.run_id,
                tables=dict(outcome.tables),
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
