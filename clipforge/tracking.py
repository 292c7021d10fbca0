"""MLflow: one run per stage execution, SQLite backend store by default, telemetry off."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from clipforge.config import MlflowConfig

# Set before mlflow is imported anywhere in the process: there is no network.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, out)
    else:
        out[prefix] = value


def flatten_params(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _flatten("", data, out)
    return out


def configure(cfg: MlflowConfig) -> str:
    """Point MLflow at the configured store and return the experiment id."""
    import mlflow

    mlflow.set_tracking_uri(cfg.tracking_uri)
    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    if experiment is not None:
        return experiment.experiment_id
    location = cfg.artifact_location
    if "://" not in location:
        location = Path(location).resolve().as_uri()
    return mlflow.create_experiment(cfg.experiment, artifact_location=location)


class MlflowTracker:
    """Adapter from the stage Tracker protocol to an active MLflow run."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        import mlflow

        flat = {k: str(v)[:6000] for k, v in flatten_params(params).items()}
        items = list(flat.items())
        for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
            mlflow.log_params(dict(items[start : start + 100]))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        import mlflow

        path = Path(path)
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        import mlflow

        mlflow.set_tags(tags)


@contextlib.contextmanager
def stage_run(cfg: MlflowConfig, stage: str, tags: dict[str, str] | None = None) -> Iterator[MlflowTracker]:
    import mlflow

    experiment_id = configure(cfg)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=stage, tags={"clipforge.stage": stage, **(tags or {})}
    ) as run:
        yield MlflowTracker(run.info.run_id)


@contextlib.contextmanager
def child_run(name: str, tags: dict[str, str] | None = None) -> Iterator[MlflowTracker]:
    """A run nested under the active one (an experiment arm under its experiment's parent run),
    in the parent's MLflow experiment (without it, MLflow files the child under "Default")."""
    import mlflow

    parent = mlflow.active_run()
    if parent is None:
        raise RuntimeError("child_run needs an active parent run")
    with mlflow.start_run(run_name=name, nested=True, experiment_id=parent.info.experiment_id, tags=tags or {}) as run:
        yield MlflowTracker(run.info.run_id)
