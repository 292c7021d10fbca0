"""The Dagster code location loads and mirrors the chain; the sensor, schedule, resource and
metadata helpers do what the UI relies on; dvc.yaml runs the same chain.
"""

from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path

import pytest
import yaml
from dagster import (
    AssetCheckSeverity,
    AssetKey,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    Definitions,
    MarkdownMetadataValue,
    RunRequest,
    SkipReason,
    build_sensor_context,
)
from PIL import Image

from assets.definitions import defs
from assets.resources import PARAMS_ENV, ClipforgeResource, default_resource
from assets.sensors import new_pool_shards
from assets.stage_assets import GATE_CHECK, GROUP, gate_check_result, report_metadata
from chain.runner import StageReport
from chain.spec import CHAIN
from clipforge.gates.result import GateResult
from clipforge.lake import open_lake
from clipforge.lake.s3 import s3_client
from pipelines.datacomp_pool import pool_tars
from tests.conftest import REPO


def test_definitions_load() -> None:
    Definitions.validate_loadable(defs)
    assert yaml.safe_load((REPO / "dagster_home" / "dagster.yaml").read_text())["telemetry"]["enabled"] is False


def test_every_stage_is_an_asset_with_a_blocking_gate() -> None:
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {s.name for s in CHAIN}
    for spec in CHAIN:
        node = graph.get(AssetKey(spec.name))
        assert node.group_name == GROUP
        assert {k.to_user_string() for k in node.parent_keys} == set(spec.inputs), spec.name
        checks = list(defs.resolve_assets_def(spec.name).check_specs)
        assert [(c.name, c.blocking) for c in checks] == [(GATE_CHECK, True)], spec.name


def _selected(job_name: str) -> set[str]:
    job = defs.resolve_job_def(job_name)
    return {k.to_user_string() for k in job.asset_layer.selected_asset_keys}


def test_jobs_and_schedule() -> None:
    assert _selected("full_chain") == {s.name for s in CHAIN}
    assert _selected("retrain") == {"student_model", "reparameterized_model", "coreml_package", "evaluation"}
    schedule = defs.resolve_schedule_def("retrain_daily")
    assert schedule.job_name == "retrain"
    assert schedule.default_status == DefaultScheduleStatus.STOPPED
    assert new_pool_shards.default_status == DefaultSensorStatus.STOPPED


def test_resource_reads_env_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PARAMS_ENV, str(REPO / "profiles" / "tiny.yaml"))
    assert default_resource().load().profile == "tiny"
    monkeypatch.delenv(PARAMS_ENV)
    assert default_resource().params_file == "params.yaml"
    resource = ClipforgeResource(params_file=str(REPO / "params.yaml"), overrides=["student_model.steps=7"])
    assert resource.load().student_model.steps == 7


def _write_tar(path: Path, names: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))


def _tick(params_file: Path, cursor: str | None) -> tuple[RunRequest | SkipReason, str | None]:
    resource = ClipforgeResource(params_file=str(params_file))
    context = build_sensor_context(cursor=cursor, resources={"clipforge": resource}, definitions=defs)
    result = new_pool_shards(context)
    return result, context.cursor


def _params_file(tmp_path: Path, **sections: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"base": str(REPO / "profiles" / "tiny.yaml"), **sections}))
    return path


def test_sensor_requests_a_run_when_local_shards_change(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    params_file = _params_file(tmp_path, datacomp_pool={"source": str(pool)})
    result, cursor = _tick(params_file, None)
    assert isinstance(result, SkipReason) and "no *.tar shards" in result.skip_message

    _write_tar(pool / "00000.tar", ["a.txt"])
    result, cursor = _tick(params_file, None)
    assert isinstance(result, RunRequest) and cursor
    assert result.tags["clipforge/pool_shards"] == "1"
    again, same = _tick(params_file, cursor)
    assert isinstance(again, SkipReason) and same == cursor

    _write_tar(pool / "00001.tar", ["b.txt"])
    newer, new_cursor = _tick(params_file, cursor)
    assert isinstance(newer, RunRequest) and new_cursor != cursor
    assert newer.run_key != result.run_key


def test_sensor_embedded_pool_lives_in_the_lake(tmp_path: Path) -> None:
    params_file = _params_file(tmp_path, lake={"root": str(tmp_path / "lake")})
    params = ClipforgeResource(params_file=str(params_file)).load()
    lake = open_lake(params.lake)
    # Written but not published (no record): the sensor sees nothing yet.
    _write_tar(tmp_path / "lake" / "embedded_corpus" / "pool" / "shards" / "00000000.tar", ["k.jpg"])
    result, _ = _tick(params_file, None)
    assert isinstance(result, SkipReason)
    with lake.publish("embedded_corpus") as out:
        _write_tar(out / "pool" / "shards" / "00000000.tar", ["k.jpg"])
        _write_tar(out / "teacher_corpus" / "shards" / "00000.tar", ["k.jpg"])  # not the pool
    result, _ = _tick(params_file, None)
    assert isinstance(result, RunRequest)
    assert result.tags["clipforge/pool_shards"] == "1"
    assert pool_tars(params, lake) == (f"{tmp_path / 'lake' / 'embedded_corpus'}/pool", ["shards/00000000.tar"])


def test_sensor_lists_s3_pool(tmp_path: Path, moto_s3: str) -> None:
    client = s3_client(moto_s3)
    client.create_bucket(Bucket="pool-bucket")
    for key in ("pool/shards/00000.tar", "pool/shards/00000.parquet", "pool/shards/00001.tar"):
        client.put_object(Bucket="pool-bucket", Key=key, Body=b"x")
    params_file = _params_file(
        tmp_path,
        lake={"root": str(tmp_path / "lake"), "endpoint_url": moto_s3},
        datacomp_pool={"source": "s3://pool-bucket/pool"},
    )
    resource = ClipforgeResource(params_file=str(params_file))
    params = resource.load()
    where, names = pool_tars(params, open_lake(params.lake))
    assert where == "s3://pool-bucket/pool/"
    assert names == ["shards/00000.tar", "shards/00001.tar"]


def test_sensor_embedded_pool_in_an_s3_lake(tmp_path: Path, moto_s3: str) -> None:
    s3_client(moto_s3).create_bucket(Bucket="lake-bucket")
    lake_cfg = {"root": "s3://lake-bucket/lake", "endpoint_url": moto_s3}
    params = ClipforgeResource(params_file=str(_params_file(tmp_path, lake=lake_cfg))).load()
    lake = open_lake(params.lake, cache_dir=tmp_path / "cache")
    where, names = pool_tars(params, lake)
    assert names == []  # embedded_corpus not published yet
    with lake.publish("embedded_corpus") as out:
        _write_tar(out / "pool" / "shards" / "00000000.tar", ["k.jpg"])
        _write_tar(out / "teacher_corpus" / "shards" / "00000.tar", ["k.jpg"])
    where, names = pool_tars(params, lake)
    assert names == ["shards/00000000.tar"]
    assert where.startswith("s3://lake-bucket/lake/embedded_corpus/")


def _png(path: Path) -> Path:
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


def test_materialization_metadata(tmp_path: Path) -> None:
    report = StageReport(
        stage="student_model",
        location=str(tmp_path / "lake" / "student_model"),
        summary={
            "steps": 4,
            "final_loss": 2.5,
            "skipped": {"bad": 1},
            "tasks": ["a", "b"],
        },
        metrics={"final_loss": 2.5, "seconds_per_step": 0.25},
        gate=GateResult(
            passed=True, checks=[{"expectation": "e", "column": None, "success": True, "observed": 1, "reason": "ok"}]
        ),
        seconds=3.21,
        mlflow_run_id="abc123",
        previews={"loss_curve": _png(tmp_path / "loss.png")},
        tables={"latency": "| form | image ms |\n|---|---|\n| PyTorch | 1.50 |"},
        manifest_rows=3,
    )
    meta = report_metadata(report)
    assert meta["dagster/row_count"].value == 3
    assert meta["mlflow_run_id"].value == "abc123"
    assert meta["steps"].value == 4
    assert meta["skipped.bad"].value == 1
    assert meta["summary"].value["tasks"] == ["a", "b"]
    assert "| final_loss | 2.5 |" in meta["metrics"].value
    assert isinstance(meta["table: latency"], MarkdownMetadataValue)
    assert "| PyTorch | 1.50 |" in meta["table: latency"].value
    image = meta["preview: loss_curve"].value
    assert image.startswith("![loss_curve](data:image/png;base64,")
    assert base64.b64decode(image.split(",", 1)[1].rstrip(")")).startswith(b"\x89PNG")


def test_gate_check_result_carries_reasons() -> None:
    reason = "datacomp_pool: column 'text': 100.0% of captions are empty (expected at most 50%)"
    gate = GateResult(
        passed=False,
        checks=[
            {
                "expectation": "expect_column_value_lengths_to_be_between",
                "column": "text",
                "success": False,
                "observed": {},
                "reason": reason,
            },
            {
                "expectation": "expect_table_row_count_to_be_between",
                "column": None,
                "success": True,
                "observed": 5,
                "reason": "ok",
            },
        ],
    )
    result = gate_check_result("datacomp_pool", gate)
    assert not result.passed
    assert result.severity == AssetCheckSeverity.ERROR
    assert result.check_name == GATE_CHECK
    assert reason in result.metadata["reasons"].value
    assert result.metadata["failed"].value == 1
