"""The whole chain on the tiny profile, through the real Dagster job, then DVC over its outputs.

One run serves both checks (it is the slow part): Dagster materializes every asset in a
throwaway DAGSTER_HOME; then, in a copy of the project's pipeline files, `dvc commit` adopts
those outputs, `dvc status` is clean, and changing one training parameter re-runs exactly
training and its downstream stages.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml
from dagster import AssetKey, DagsterInstance

from assets.definitions import defs
from chain.spec import CHAIN
from clipforge.params_file import load_params
from tests.conftest import REPO
from training.teacher_models import BOOTSTRAP_TEACHERS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PROJECT_FILES = ("chain", "clipforge", "pipelines", "training", "export", "dvc.yaml", ".dvcignore", "pyproject.toml")


def _project_copy(dst: Path, lake: Path, tiny_params: dict) -> None:
    """The pipeline's code and dvc.yaml in ``dst``, the tiny profile as its params.yaml."""
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(src, dst / name)
    (dst / "params.yaml").write_text(yaml.safe_dump(tiny_params, sort_keys=False))
    shutil.copytree(lake, dst / "lake", symlinks=False)


def _dvc(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_whole_chain_through_dagster_then_dvc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # reports/ and metrics/ land here

    # The tiny profile, resolved into one self-contained params file (as DVC needs it).
    base = load_params(
        REPO / "profiles" / "tiny.yaml",
        [
            "lake.root=lake",
            f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"mlflow.artifact_location={tmp_path / 'mlartifacts'}",
            "mlflow.experiment=clipforge",
        ],
    ).model_dump(mode="json")
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(base, sort_keys=False))

    with DagsterInstance.get() as instance:
        result = defs.resolve_job_def("full_chain").execute_in_process(
            instance=instance,
            run_config={"resources": {"clipforge": {"config": {"params_file": str(params_file)}}}},
        )
        assert result.success
        for spec in CHAIN:
            event = instance.get_latest_materialization_event(AssetKey(spec.name))
            assert event is not None, f"{spec.name} was not materialized"
        checks = result.get_asset_check_evaluations()
        assert len(checks) == len(CHAIN) and all(c.passed for c in checks)
        # The evaluation's materialization shows the references: chance and each teacher beside
        # the student, as a table and a bar chart.
        evaluation = instance.get_latest_materialization_event(AssetKey("evaluation"))
        assert evaluation is not None and evaluation.asset_materialization is not None
        meta = evaluation.asset_materialization.metadata
        table = meta["table: references"].value
        models = [line.split("|")[1].strip() for line in table.splitlines()[2:]]
        teachers = [name for name, _, _ in BOOTSTRAP_TEACHERS]
        assert models == ["chance", "student", *teachers, "teacher-ensemble"]
        assert "| chance | 0.1667 | 0.1250 | 0.2500 | 0.2500 |" in table  # 6, 8, 4, 4 classes
        assert meta["preview: references"].value.startswith("![references](data:image/png;base64,")

    lake = work / "lake"
    exported = sorted(p.name for p in (lake / "coreml_package").iterdir() if p.suffix in (".mlpackage", ".onnx"))
    assert exported == ["image_encoder.mlpackage", "image_encoder.onnx", "text_encoder.mlpackage", "text_encoder.onnx"]
    metrics = json.loads((lake / "evaluation" / "metrics.json").read_text())
    assert 0.0 <= metrics["zeroshot_top1_mean"] <= 1.0
    assert 0.0 <= metrics["retrieval_mean_r1"] <= 1.0
    assert json.loads((work / "metrics" / "evaluation.json").read_text()) == metrics
    for model in ("chance", *(name for name, _, _ in BOOTSTRAP_TEACHERS), "teacher-ensemble"):
        assert 0.0 <= metrics[f"{model}/zeroshot_top1_mean"] <= 1.0

    mlflow.set_tracking_uri(base["mlflow"]["tracking_uri"])
    champion = mlflow.MlflowClient().get_model_version_by_alias("clipforge-student", "champion")
    assert str(champion.version) == "1"

    # DVC over the same outputs: adopt them, nothing to do, then one training param change.
    project = tmp_path / "project"
    project.mkdir()
    _project_copy(project, lake, base)
    (project / "metrics").mkdir()
    shutil.copy(work / "metrics" / "evaluation.json", project / "metrics" / "evaluation.json")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    _dvc(project, "init", "-q")
    _dvc(project, "config", "core.analytics", "false")
    _dvc(project, "commit", "--force", "--quiet")
    assert "up to date" in _dvc(project, "status").lower()

    base["student_model"]["steps"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    ran = _dvc(project, "repro")
    would_run = {line.split("'")[1] for line in ran.splitlines() if line.startswith("Running stage")}
    assert would_run == {"student_model", "reparameterized_model", "coreml_package", "evaluation"}
    assert "up to date" in _dvc(project, "status").lower()
