"""One Dagster asset per stage of ``chain.spec.CHAIN``, each with a blocking quality check.

The stages themselves live in ``pipelines/``, ``training/`` and ``export/``; an asset only
calls the shared runner (:func:`chain.runner.run_stage`, the same call DVC makes through
the CLI) and turns its report into what a person wants to see in the UI. Rather than eleven
copies of the same thin module, :func:`build_stage_asset` is the module and
:data:`STAGE_ASSETS` lists its instances, in chain order.
"""

import base64
import json
from pathlib import Path
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets.resources import ClipforgeResource
from chain.runner import StageReport, run_stage
from chain.spec import CHAIN, StageSpec
from clipforge.gates import GateResult

GROUP = "clipforge"
GATE_CHECK = "quality_gate"
# Previews above this size are linked by path instead of inlined: the event log keeps every
# materialization's metadata, and a data URI grows it by the image size times 4/3.
MAX_INLINE_PREVIEW_BYTES = 1_000_000
MAX_SUMMARY_ENTRIES = 40


def _scalar(value: Any) -> Any | None:
    """A metadata value for a summary entry, or None when it belongs in the JSON blob."""
    if isinstance(value, bool):
        return MetadataValue.bool(value)
    if isinstance(value, int):
        return MetadataValue.int(value)
    if isinstance(value, float):
        return MetadataValue.float(value)
    if isinstance(value, str) and len(value) <= 200:
        return MetadataValue.text(value)
    return None


def _flatten(data: dict[str, Any], prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            if depth < 1:
                out.extend(_flatten(value, f"{name}.", depth + 1))
        else:
            out.append((name, value))
    return out


def metrics_markdown(metrics: dict[str, float]) -> str:
    rows = [f"| {name} | {value:.4g} |" for name, value in sorted(metrics.items())]
    return "\n".join(["| metric | value |", "|---|---|", *rows])


def preview_metadata(label: str, path: Path) -> Any:
    """Inline a PNG preview as a markdown data-URI image (the UI's markdown allows ``data:``)."""
    path = Path(path)
    if not path.is_file():
        return MetadataValue.text(f"missing preview file: {path}")
    if path.suffix.lower() != ".png" or path.stat().st_size > MAX_INLINE_PREVIEW_BYTES:
        return MetadataValue.path(str(path))
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return MetadataValue.md(f"![{label}](data:image/png;base64,{encoded})")


def report_metadata(report: StageReport) -> dict[str, Any]:
    """What a person wants on the materialization: counts, summary, where, how long, MLflow."""
    location = report.location
    meta: dict[str, Any] = {
        "dagster/row_count": MetadataValue.int(report.manifest_rows),
        "location": MetadataValue.url(location) if location.startswith("s3://") else MetadataValue.path(location),
        "seconds": MetadataValue.float(round(report.seconds, 2)),
        "mlflow_run_id": MetadataValue.text(report.mlflow_run_id or "not tracked"),
        "quality_gate": MetadataValue.text(
            f"passed ({len(report.gate.checks)} expectations)"
            if report.gate.passed
            else f"FAILED ({len(report.gate.failures)} of {len(report.gate.checks)} expectations)"
        ),
    }
    # Scalar summary facts as their own entries (numbers get plotted across runs in the UI),
    # nested ones as "a.b"; the whole summary as JSON too, so nothing is left out.
    for key, value in _flatten(report.summary)[:MAX_SUMMARY_ENTRIES]:
        entry = _scalar(value)
        if entry is not None and key not in meta:
            meta[key] = entry
    # Markdown tables a stage renders (evaluation's per-task metrics, latency) as tables.
    for label, table in report.tables.items():
        meta[f"table: {label}"] = MetadataValue.md(table)
    if report.summary:
        meta["summary"] = MetadataValue.json(json.loads(json.dumps(report.summary, default=str)))
    if report.metrics:
        meta["metrics"] = MetadataValue.md(metrics_markdown(report.metrics))
    for label, path in report.previews.items():
        meta[f"preview: {label}"] = preview_metadata(label, path)
    return meta


def gate_check_result(stage: str, gate: GateResult) -> AssetCheckResult:
    failures = [c["reason"] for c in gate.failures]
    description = (
        f"all {len(gate.checks)} expectations passed"
        if gate.passed
        else f"{len(failures)} of {len(gate.checks)} expectations failed: " + "; ".join(failures)
    )
    return AssetCheckResult(
        asset_key=stage,
        check_name=GATE_CHECK,
        passed=gate.passed,
        severity=AssetCheckSeverity.ERROR,
        description=description[:2000],
        metadata={
            "expectations": MetadataValue.int(len(gate.checks)),
            "failed": MetadataValue.int(len(failures)),
            "reasons": MetadataValue.md("\n".join(f"- {r}" for r in failures) or "none"),
            "checks": MetadataValue.json(json.loads(json.dumps(gate.checks, default=str))),
        },
    )


def build_stage_asset(spec: StageSpec) -> AssetsDefinition:
    """The asset for one stage: same key as the stage, deps = its inputs, a blocking gate."""

    @asset(
        name=spec.name,
        deps=list(spec.inputs),
        group_name=GROUP,
        description=spec.description,
        check_specs=[
            AssetCheckSpec(
                GATE_CHECK,
                asset=spec.name,
                blocking=True,
                description=f"Great Expectations suite over the stage's manifest ({spec.module}.quality_suite); "
                "a failure stops every downstream asset.",
            )
        ],
        metadata={"params_sections": ", ".join(spec.sections), "module": spec.module},
    )
    def _stage(context: AssetExecutionContext, clipforge: ClipforgeResource) -> MaterializeResult:
        params = clipforge.load()
        context.log.info(f"running stage {spec.name} with params {clipforge.params_file} (profile {params.profile})")
        report = run_stage(spec.name, params, show_progress=False)
        if not report.gate.passed:
            context.log.error(f"{spec.name}: quality gate failed:\n{report.gate.reason()}")
        return MaterializeResult(
            metadata=report_metadata(report),
            check_results=[gate_check_result(spec.name, report.gate)],
        )

    return _stage


STAGE_ASSETS: list[AssetsDefinition] = [build_stage_asset(spec) for spec in CHAIN]
