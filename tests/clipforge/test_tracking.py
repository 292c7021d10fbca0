"""MLflow runs: a child run sits in its parent's experiment, linked to the parent."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from clipforge.config import MlflowConfig
from clipforge.tracking import child_run, stage_run


def test_child_runs_live_in_the_parents_experiment(tmp_path: Path) -> None:
    cfg = MlflowConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "artifacts"),
        experiment="clipforge-test",
    )
    with pytest.raises(RuntimeError, match="parent"), child_run("orphan"):
        pass
    with stage_run(cfg, "experiment") as parent, child_run("arm seed 0", {"clipforge.experiment.arm": "arm"}) as child:
        child.log_metrics({"x": 1.0}, 1)
    client = mlflow.MlflowClient(cfg.tracking_uri)
    run = client.get_run(child.run_id)
    assert run.info.experiment_id == client.get_experiment_by_name("clipforge-test").experiment_id
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert run.data.tags["clipforge.experiment.arm"] == "arm"
