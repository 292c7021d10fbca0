"""A failed quality gate stops the chain in Dagster: a pool whose captions are all empty fails
datacomp_pool's blocking check, with the readable reason in the check's metadata, and nothing
downstream is materialized.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterEventType, DagsterInstance

from assets.definitions import defs
from assets.stage_assets import GATE_CHECK
from chain.spec import CHAIN
from clipforge.params_file import load_params
from pipelines.embedded_corpus import generate_pool
from tests.conftest import REPO

EMPTY_CAPTIONS_REASON = "datacomp_pool: column 'text': 100.0% of captions are empty (expected at most 50%)"


def blank_captions(shards: Path) -> int:
    """Rewrite every ``KEY.txt`` member of the pool's tars to an empty caption; returns how many."""
    blanked = 0
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as src:
            members = [(m, src.extractfile(m).read() if m.isfile() else None) for m in src.getmembers()]
        with tarfile.open(tar_path, "w") as dst:
            for member, data in members:
                if member.name.endswith(".txt"):
                    data, blanked = b"", blanked + 1
                member.size = len(data or b"")
                dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return blanked


@pytest.fixture()
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The committed instance config (telemetry off) in a throwaway DAGSTER_HOME.
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as inst:
        yield inst


def test_failed_gate_blocks_downstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance) -> None:
    monkeypatch.chdir(tmp_path)  # reports/ and anything relative land in the tmp folder
    params_file = tmp_path / "params.yaml"
    pool = tmp_path / "empty_caption_pool"
    params_file.write_text(
        yaml.safe_dump(
            {
                "base": str(REPO / "profiles" / "tiny.yaml"),
                # Smaller than tiny: the test is about the gate, not the data.
                "embedded_corpus": {"pool_size": 40, "teacher_corpus_size": 32, "benchmark_size": 8, "shard_size": 16},
                "lake": {"root": str(tmp_path / "lake")},
                "mlflow": {
                    "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                    "artifact_location": str(tmp_path / "mlartifacts"),
                },
                "datacomp_pool": {"source": str(pool)},
            }
        )
    )
    cfg = load_params(params_file).embedded_corpus
    generate_pool(pool, cfg)
    assert blank_captions(pool / "shards") == cfg.pool_size

    # datacomp_pool and everything after it, minus the model bootstraps (not needed to show
    # the block, and the slowest part of a tiny run).
    names = [spec.name for spec in CHAIN]
    downstream = [n for n in names[names.index("datacomp_pool") :] if n not in ("teacher_models", "captioner_model")]
    selection = [AssetKey("embedded_corpus"), *(AssetKey(n) for n in downstream)]

    # The real full_chain job, its params file overridden in run config as the UI would.
    result = defs.resolve_job_def("full_chain").execute_in_process(
        instance=instance,
        asset_selection=selection,
        run_config={"resources": {"clipforge": {"config": {"params_file": str(params_file)}}}},
        raise_on_error=False,
    )
    assert not result.success

    evaluations = {e.asset_key.to_user_string(): e for e in result.get_asset_check_evaluations()}
    assert evaluations["embedded_corpus"].passed
    gate = evaluations["datacomp_pool"]
    assert gate.check_name == GATE_CHECK
    assert not gate.passed
    reasons = gate.metadata["reasons"].value
    assert EMPTY_CAPTIONS_REASON in reasons
    assert EMPTY_CAPTIONS_REASON in (gate.description or "")

    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"embedded_corpus", "datacomp_pool"}
    # Downstream steps are abandoned ("Dependencies for step filtered_pool failed"): never started.
    started = {e.step_key for e in result.all_events if e.event_type == DagsterEventType.STEP_START}
    assert started == {"embedded_corpus", "datacomp_pool"}
    failure = next(e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE)
    assert failure.step_key == "datacomp_pool"
    assert "blocking asset check failed" in failure.step_failure_data.error.message
    for name in downstream[1:]:
        assert instance.get_latest_materialization_event(AssetKey(name)) is None, name
        assert not (tmp_path / "lake" / name).exists(), name
    # datacomp_pool did publish (the gate judges a published output) and says why it failed.
    report = yaml.safe_load((tmp_path / "lake" / "datacomp_pool" / "report.json").read_text())
    assert not report["gate"]["passed"]
