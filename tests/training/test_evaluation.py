"""The evaluation stage end to end on a tiny random student and tiny benchmarks."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from PIL import Image

from clipforge.config import MlflowConfig
from clipforge.stage_api import MANIFEST_FILE, StageContext
from clipforge.tracking import configure
from export.package import FILES
from tests.conftest import params_with, section
from tests.training.benchmark_helpers import write_samples
from training.evaluation import measure_latency, run
from training.models.students import build_student, load_student, save_student

REFERENCES = ("chance", "teacher0", "teacher1", "teacher-ensemble")
RETRIEVAL_KEYS = {f"{d}_r{k}" for d in ("image", "text") for k in (1, 5, 10)}
CLASSIFICATION_KEYS = {"top1", "top5", "mean_per_class_recall"}
TORCH_LATENCY_KEYS = {"latency_image_ms", "latency_text_ms"}
ONNX_LATENCY_KEYS = {"latency_onnx_image_ms", "latency_onnx_text_ms"}


def _jpg(colour: tuple[int, int, int], size: tuple[int, int] = (20, 14)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG")
    return buf.getvalue()


def write_benchmark(root: Path) -> None:
    """tasks.json + one classification task (with one bad sample) + one retrieval task."""
    colours = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
    cls = root / "colour"
    (cls / "classnames.txt").parent.mkdir(parents=True)
    (cls / "classnames.txt").write_text("\n".join(colours) + "\n")
    (cls / "zeroshot_classification_templates.txt").write_text("a photo of a {c} thing.\na {c} picture.\n")
    samples = [(f"c{i}", {"jpg": _jpg(rgb), "cls": str(i % 3).encode()}) for i, rgb in enumerate(colours.values())]
    samples += [(f"d{i}", {"jpg": _jpg(rgb), "cls": str(i).encode()}) for i, rgb in enumerate(colours.values())]
    samples.append(("bad", {"jpg": b"\xff\xd8 truncated", "cls": b"0"}))
    write_samples(cls / "test" / "0.tar", samples)
    ret = root / "caps"
    write_samples(
        ret / "test" / "0.tar",
        [
            (f"r{i}", {"jpg": _jpg(rgb), "txt": f"a {name} square\n{name} picture\nsomething {name}".encode()})
            for i, (name, rgb) in enumerate(colours.items())
        ],
    )
    (root / "tasks.json").write_text(
        json.dumps([{"name": "colour", "type": "classification"}, {"name": "caps", "type": "retrieval"}])
    )


def write_extra_task(folder: Path) -> None:
    """A single clip_benchmark task folder given directly (extra_benchmarks entry)."""
    (folder / "test").mkdir(parents=True)
    (folder / "classnames.txt").write_text("dark\nbright\n")
    (folder / "zeroshot_classification_templates.txt").write_text("a {c} image.\n")
    write_samples(
        folder / "test" / "0.tar",
        [(f"k{i}", {"jpg": _jpg((v, v, v)), "cls": str(int(v > 128)).encode()}) for i, v in enumerate((10, 240, 30))],
    )


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory, teacher_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lake")
    torch.manual_seed(0)
    save_student(build_student("tiny-vit"), root / "reparameterized_model" / "model")
    write_benchmark(root / "embedded_corpus" / "benchmark")
    write_extra_task(root / "extra" / "grey")
    package = root / "coreml_package"
    (package / "image_encoder.mlpackage" / "Data").mkdir(parents=True)
    (package / "image_encoder.mlpackage" / "Manifest.json").write_text("{}")
    (package / "image_encoder.onnx").write_bytes(b"onnx")
    write_package_manifest(package)
    return {
        "reparameterized_model": root / "reparameterized_model",
        "embedded_corpus": root / "embedded_corpus",
        "coreml_package": package,
        "teacher_models": teacher_dir,
        "extra": root / "extra" / "grey",
    }


def _ctx(tmp_path: Path, inputs: dict[str, Path], run_id: str | None = None, **evaluation: Any) -> StageContext:
    out = tmp_path / "out"
    out.mkdir(parents=True, exist_ok=True)
    params = params_with(evaluation={"batch_size": 64, **evaluation})
    return StageContext(
        name="evaluation", params=params, inputs=inputs, out_dir=out, show_progress=False, run_id=run_id
    )


def write_package_manifest(package: Path) -> None:
    """coreml_package's manifest rows (file, format, tower) for the files present in ``package``."""
    rows = [{"file": e.file, "format": e.format, "tower": e.tower} for e in FILES if (package / e.file).exists()]
    pd.DataFrame(rows).to_parquet(package / MANIFEST_FILE, index=False)


def test_run_without_mlflow(lake: dict[str, Path], tmp_path: Path) -> None:
    inputs = {k: v for k, v in lake.items() if k != "extra"}
    ctx = _ctx(tmp_path, inputs, extra_benchmarks=[str(lake["extra"])])
    outcome = run(ctx)

    metrics = json.loads((ctx.out_dir / "metrics.json").read_text())
    expected = {f"colour/{m}" for m in CLASSIFICATION_KEYS} | {f"grey/{m}" for m in CLASSIFICATION_KEYS}
    expected |= {f"caps/{m}" for m in RETRIEVAL_KEYS} | {"zeroshot_top1_mean", "retrieval_mean_r1"}
    # Every reference model has the student's keys under its name.
    references = {f"{ref}/{key}" for ref in REFERENCES for key in expected}
    # The package holds no text_encoder.onnx: PyTorch latency only.
    assert set(metrics) == expected | references | TORCH_LATENCY_KEYS and metrics == pytest.approx(outcome.metrics)
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k in expected)
    assert metrics["zeroshot_top1_mean"] == pytest.approx((metrics["colour/top1"] + metrics["grey/top1"]) / 2)
    assert metrics["retrieval_mean_r1"] == pytest.approx((metrics["caps/image_r1"] + metrics["caps/text_r1"]) / 2)
    # k is capped at the candidates: 3 images and 9 captions -> R@5 and R@10 are certain
    assert metrics["caps/image_r5"] == metrics["caps/text_r10"] == 1.0
    assert metrics["grey/top5"] == 1.0  # 2 classes

    manifest: pd.DataFrame = outcome.manifest
    assert {"model", "task", "kind", "metric", "value"} <= set(manifest.columns)
    assert set(manifest.model) == {"student", *REFERENCES}
    assert len(manifest) == (3 + 3 + 6) * (1 + len(REFERENCES))
    assert not manifest.duplicated(["model", "task", "metric"]).any()
    assert set(manifest.loc[manifest.task == "caps", "kind"]) == {"retrieval"}
    assert manifest.value.between(0, 1).all()

    summary, tables = outcome.summary, outcome.tables
    tasks = {t["name"]: t for t in summary["tasks"]}
    assert tasks["colour"]["samples"] == 6 and tasks["colour"]["skip_reasons"] == {"undecodable_image": 1}
    assert tasks["caps"]["captions"] == 9 and summary["samples_skipped"] == 1
    assert "| colour |" in tables["metrics"] and "| caps |" in tables["metrics"]
    # The references table: a row per model, chance at 1/classes and at random retrieval.
    rows = {line.split("|")[1].strip(): line for line in tables["references"].splitlines()[2:]}
    assert list(rows) == ["chance", "student", "teacher0", "teacher1", "teacher-ensemble"]
    assert metrics["chance/colour/top1"] == pytest.approx(1 / 3) and metrics["chance/grey/top1"] == 0.5
    assert metrics["chance/caps/image_r1"] == pytest.approx(1 / 3)
    assert metrics["chance/zeroshot_top1_mean"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert f"{metrics['teacher1/colour/top1']:.4f}" in rows["teacher1"]
    assert outcome.previews == {"references": "previews/reference_chart.png"}
    assert (ctx.out_dir / "previews" / "reference_chart.png").stat().st_size > 1000
    assert summary["registry"]["promoted"] is False and "no MLflow run" in summary["registry"]["reason"]
    assert summary["registry"]["exports_attached"] == ["image_encoder.mlpackage", "image_encoder.onnx"]
    assert ctx.tracker.tags["clipforge.registry.promoted"] == "false"  # type: ignore[attr-defined]
    latency = summary["latency"]
    assert set(latency["forms"]) == {"torch"} and "text tower" in latency["onnx_skipped"]
    assert metrics["latency_image_ms"] == latency["forms"]["torch"]["image"]["median_ms"]
    assert metrics["latency_text_ms"] == latency["forms"]["torch"]["text"]["median_ms"]
    assert latency["repeats"] == 10 and latency["threads"] == torch.get_num_threads()
    assert "| PyTorch, folded |" in tables["latency"] and "ONNX" not in tables["latency"]
    json.dumps(summary)  # the report must be JSON-able


def _assert_timings(forms: dict[str, Any], expected_forms: set[str]) -> None:
    assert set(forms) == expected_forms
    for towers in forms.values():
        for tower in ("image", "text"):
            timing = towers[tower]
            assert 0 < timing["median_ms"] <= timing["p90_ms"] and math.isfinite(timing["p90_ms"])
        assert towers["total_ms"] == pytest.approx(towers["image"]["median_ms"] + towers["text"]["median_ms"])


def test_latency_of_the_packaged_onnx_files(lake: dict[str, Path], tmp_path: Path) -> None:
    from export.onnx_export import export_image_onnx, export_text_onnx

    student = load_student(lake["reparameterized_model"] / "model")
    package = tmp_path / "coreml_package"
    export_image_onnx(student, package / "image_encoder.onnx", opset=18)
    export_text_onnx(student, package / "text_encoder.onnx", opset=18)
    write_package_manifest(package)
    ctx = _ctx(tmp_path, {**lake, "coreml_package": package}, latency_repeats=3, latency_warmup=1)
    outcome = run(ctx)

    assert set(outcome.metrics) >= TORCH_LATENCY_KEYS | ONNX_LATENCY_KEYS
    latency = outcome.summary["latency"]
    _assert_timings(latency["forms"], {"torch", "onnx"})
    assert latency["onnx_skipped"] is None and latency["forms"]["onnx"]["image"]["repeats"] == 3
    assert outcome.metrics["latency_onnx_text_ms"] == latency["forms"]["onnx"]["text"]["median_ms"]
    assert "| ONNX Runtime (coreml_package files) |" in outcome.tables["latency"]
    # Latency never enters the gated manifest (values in [0, 1], kinds classification/retrieval).
    assert not outcome.manifest.metric.str.startswith("latency").any()


def test_unreadable_onnx_files_skip_onnx_latency(lake: dict[str, Path], tmp_path: Path) -> None:
    package = tmp_path / "coreml_package"
    package.mkdir()
    for name in ("image_encoder.onnx", "text_encoder.onnx"):
        (package / name).write_bytes(b"not an onnx file")
    write_package_manifest(package)
    ctx = _ctx(tmp_path, {**lake, "coreml_package": package}, latency_repeats=2)
    metrics, summary, table = measure_latency(ctx, load_student(lake["reparameterized_model"] / "model"))
    assert set(metrics) == TORCH_LATENCY_KEYS
    _assert_timings(summary["forms"], {"torch"})
    assert "could not run" in summary["onnx_skipped"] and "PyTorch" in table


def test_missing_promotion_metric_is_a_recorded_skip(lake: dict[str, Path], tmp_path: Path) -> None:
    # The embedded benchmark alone has no task named like this metric: nothing is registered.
    ctx = _ctx(tmp_path, lake, run_id="not-used", promotion_metric="colour/top7")
    outcome = run(ctx)
    assert outcome.summary["registry"]["version"] is None
    assert "not computed" in outcome.summary["registry"]["reason"]


def test_duplicate_task_names_across_benchmarks_are_an_error(lake: dict[str, Path], tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, lake, extra_benchmarks=[str(lake["embedded_corpus"] / "benchmark")])
    with pytest.raises(ValueError, match="appears in both"):
        run(ctx)


@pytest.fixture()
def mlflow_experiment(tmp_path: Path) -> Iterator[str]:
    import mlflow

    previous = mlflow.get_tracking_uri()
    yield configure(
        MlflowConfig(
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            artifact_location=str(tmp_path / "mlartifacts"),
            experiment="evaluation-test",
        )
    )
    mlflow.set_tracking_uri(previous)


def test_run_registers_and_promotes(lake: dict[str, Path], tmp_path: Path, mlflow_experiment: str) -> None:
    import mlflow
    from mlflow import MlflowClient

    decisions = []
    for attempt in range(2):
        with mlflow.start_run(experiment_id=mlflow_experiment) as active:
            ctx = _ctx(tmp_path / str(attempt), lake, run_id=active.info.run_id, registered_model="evaluated")
            decisions.append(run(ctx).summary["registry"])
    first, second = decisions
    assert first["version"] == 1 and first["promoted"] and first["metric"] == "zeroshot_top1_mean"
    assert math.isfinite(first["value"])
    # Same weights, same benchmark: the same value is not strictly better.
    assert second["version"] == 2 and not second["promoted"] and second["previous_champion"] == 1
    champion = MlflowClient().get_model_version_by_alias("evaluated", "champion")
    assert int(champion.version) == 1
    assert float(champion.tags["clipforge.metric.zeroshot_top1_mean"]) == pytest.approx(first["value"])


def test_run_on_generated_embedded_benchmark(lake: dict[str, Path], tmp_path: Path) -> None:
    embedded_corpus = pytest.importorskip("pipelines.embedded_corpus")

    corpus = tmp_path / "embedded_corpus"
    embedded_corpus.generate_benchmark(
        corpus / "benchmark", section("embedded_corpus", benchmark_size=6, image_size=32)
    )
    inputs = {**lake, "embedded_corpus": corpus}
    outcome = run(_ctx(tmp_path, inputs))
    kinds = dict(zip(outcome.manifest.task, outcome.manifest.kind, strict=True))
    assert "retrieval" in kinds.values() and "classification" in kinds.values()
    assert {"zeroshot_top1_mean", "retrieval_mean_r1"} <= set(outcome.metrics)
    assert all(t["samples"] == 6 for t in outcome.summary["tasks"])


def test_a_teacher_named_like_a_report_row_is_an_error(lake: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    teachers = tmp_path / "teacher_models"
    shutil.copytree(lake["teacher_models"], teachers)
    record = json.loads((teachers / "teacher0" / "model.json").read_text())
    (teachers / "teacher0" / "model.json").write_text(json.dumps({**record, "name": "chance"}))
    ctx = _ctx(tmp_path, {**lake, "teacher_models": teachers}, latency_repeats=1, latency_warmup=0)
    with pytest.raises(ValueError, match=r"teacher names \['chance'\] clash"):
        run(ctx)
