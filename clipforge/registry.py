"""MLflow model registry: register each evaluated student, move the champion alias on merit.

Uses the active MLflow tracking URI (``clipforge.tracking.configure`` sets it). The student
folder (``student.json``, ``weights.pt``) and the exported files are logged as artifacts of
the stage's run under ``model/`` (exports under ``model/exports/``); a new version of the
registered model points at ``runs:/<run_id>/model``, so downloading a version gives a folder
``training.models.students.load_student`` reads. The promotion metric is recorded on the version as
a tag; the alias moves only when the new value is strictly higher than the champion's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import clipforge.tracking  # noqa: F401  (sets MLflow telemetry off before mlflow is imported)

MODEL_ARTIFACT_PATH = "model"
EXPORTS_SUBDIR = "exports"
METRIC_NAME_TAG = "clipforge.promotion_metric"
RUN_ID_TAG = "clipforge.run_id"


def _metric_tag(metric: str) -> str:
    return f"clipforge.metric.{metric}"


def _champion(client: Any, registered_model: str, alias: str) -> Any | None:
    """The version holding ``alias``, or None when the alias (or the model) does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(registered_model, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _ensure_registered_model(client: Any, registered_model: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(registered_model)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(
            registered_model, description="clipforge mobile CLIP students; alias marks the best by evaluation"
        )


def log_model_artifacts(
    client: Any, run_id: str, model_dir: Path, extra_artifacts: dict[str, Path], marker: str
) -> None:
    """Model folder -> ``model/``; each export (file or folder such as .mlpackage) -> ``model/exports/``.

    ``marker`` is the file that makes ``model_dir`` a model folder (a student's ``student.json``).
    """
    if not (Path(model_dir) / marker).is_file():
        raise FileNotFoundError(f"{model_dir} is not a model folder (no {marker})")
    client.log_artifacts(run_id, str(model_dir), MODEL_ARTIFACT_PATH)
    for name, path in extra_artifacts.items():
        path = Path(path)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), f"{MODEL_ARTIFACT_PATH}/{EXPORTS_SUBDIR}/{name}")
        elif path.is_file():
            client.log_artifact(run_id, str(path), f"{MODEL_ARTIFACT_PATH}/{EXPORTS_SUBDIR}")
        else:
            raise FileNotFoundError(f"extra artifact {name!r} not found: {path}")


def promote_if_better(
    run_id: str,
    model_dir: Path,
    extra_artifacts: dict[str, Path],
    metrics: dict[str, float],
    registered_model: str,
    metric: str,
    alias: str,
    marker: str,
) -> dict[str, Any]:
    """Register the run's model as a new version; give it ``alias`` if ``metric`` beats the holder's.

    Returns ``{"version", "promoted", "previous_champion", "previous_value", "value", "reason"}``.
    The first version always takes the alias; later ones only when strictly better (higher).
    A non-finite value is registered but never promoted.
    """
    from mlflow import MlflowClient

    if metric not in metrics:
        raise KeyError(f"promotion metric {metric!r} not among the metrics: {sorted(metrics)}")
    value = float(metrics[metric])
    client = MlflowClient()
    log_model_artifacts(client, run_id, Path(model_dir), extra_artifacts, marker)
    _ensure_registered_model(client, registered_model)
    champion = _champion(client, registered_model, alias)
    version = client.create_model_version(
        registered_model,
        source=f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}",
        run_id=run_id,
        tags={METRIC_NAME_TAG: metric, _metric_tag(metric): repr(value), RUN_ID_TAG: run_id},
    ).version

    previous_version = champion.version if champion is not None else None
    previous_value: float | None = None
    if champion is not None and _metric_tag(metric) in champion.tags:
        previous_value = float(champion.tags[_metric_tag(metric)])

    if not math.isfinite(value):
        promoted, reason = False, f"{metric}={value} is not finite"
    elif champion is None:
        promoted, reason = True, f"first version with alias {alias!r}"
    elif previous_value is None or not math.isfinite(previous_value):
        promoted, reason = True, f"champion v{previous_version} has no finite {metric} recorded"
    elif value > previous_value:
        promoted, reason = True, f"{metric} {value:.4f} > champion v{previous_version} {previous_value:.4f}"
    else:
        promoted, reason = False, f"{metric} {value:.4f} <= champion v{previous_version} {previous_value:.4f}"
    if promoted:
        client.set_registered_model_alias(registered_model, alias, version)
    client.set_model_version_tag(registered_model, version, "clipforge.promotion", reason)
    return {
        "version": int(version),
        "promoted": promoted,
        "previous_champion": int(previous_version) if previous_version is not None else None,
        "previous_value": previous_value,
        "value": value,
        "reason": reason,
    }


def download_version(registered_model: str, ref: str, dst: Path) -> Path:
    """A registered version's folder, downloaded under ``dst``; ``ref`` is a version ("3") or "@alias"."""
    import mlflow

    uri = f"models:/{registered_model}{ref}" if ref.startswith("@") else f"models:/{registered_model}/{ref}"
    Path(dst).mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(dst)))
