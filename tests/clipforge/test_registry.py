"""Registry promotion against a real MLflow SQLite store in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from clipforge.config import MlflowConfig
from clipforge.registry import download_version, promote_if_better
from clipforge.tracking import configure
from training.models.students import STUDENT_FILE, build_student, load_student, save_student

MODEL = "test-student"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One SQLite store for the module (creating its tables takes seconds); tests use distinct model names."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    folder = tmp_path_factory.mktemp("mlflow")
    cfg = MlflowConfig(
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        artifact_location=str(folder / "mlartifacts"),
        experiment="registry-test",
    )
    yield configure(cfg)
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def students(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three tiny students with different random weights, saved as folders."""
    folders = []
    for seed in range(3):
        torch.manual_seed(seed)
        folder = tmp_path_factory.mktemp(f"student{seed}")
        save_student(build_student("tiny-vit"), folder)
        folders.append(folder)
    return folders


def _exports(tmp_path: Path) -> dict[str, Path]:
    onnx = tmp_path / "image_encoder.onnx"
    onnx.write_bytes(b"onnx-bytes")
    package = tmp_path / "image_encoder.mlpackage"
    (package / "Data").mkdir(parents=True, exist_ok=True)
    (package / "Manifest.json").write_text("{}")
    return {onnx.name: onnx, package.name: package}


def _promote(
    experiment_id: str, model_dir: Path, value: float, extra: dict[str, Path] | None = None, model: str = MODEL
) -> dict:
    import mlflow

    with mlflow.start_run(experiment_id=experiment_id) as run:
        return promote_if_better(
            run.info.run_id,
            model_dir,
            extra or {},
            {"score": value, "other": 0.1},
            registered_model=model,
            metric="score",
            alias="champion",
            marker=STUDENT_FILE,
        )


def test_promotion_sequence_and_champion_loads_back(experiment: str, students: list[Path], tmp_path: Path) -> None:
    from mlflow import MlflowClient

    first = _promote(experiment, students[0], 0.5, _exports(tmp_path))
    assert first["version"] == 1 and first["promoted"]
    assert first["previous_champion"] is None and first["previous_value"] is None

    worse = _promote(experiment, students[1], 0.4)
    assert worse["version"] == 2 and not worse["promoted"]
    assert worse["previous_champion"] == 1 and worse["previous_value"] == 0.5

    better = _promote(experiment, students[2], 0.6)
    assert better["version"] == 3 and better["promoted"] and better["previous_champion"] == 1

    equal = _promote(experiment, students[0], 0.6)  # not strictly better
    assert equal["version"] == 4 and not equal["promoted"] and equal["previous_value"] == 0.6

    client = MlflowClient()
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert int(champion.version) == 3
    assert float(champion.tags["clipforge.metric.score"]) == 0.6
    assert champion.tags["clipforge.promotion"] == "score 0.6000 > champion v1 0.5000"

    # The champion is a loadable student with the third student's weights.
    folder = download_version(MODEL, "@champion", tmp_path / "dl_champion")
    loaded, original = load_student(folder), load_student(students[2])
    pixels = torch.rand(2, 3, loaded.info.image_size, loaded.info.image_size)
    tokens = loaded.tokenizer()(["a red circle", "two blue squares"])
    with torch.no_grad():
        assert torch.allclose(loaded.encode_image(pixels), original.encode_image(pixels), atol=1e-6)
        assert torch.allclose(loaded.encode_text(tokens), original.encode_text(tokens), atol=1e-6)
        other = load_student(students[0])
        assert not torch.allclose(loaded.encode_image(pixels), other.encode_image(pixels), atol=1e-3)

    # Version 1 carries the exported files beside the student folder.
    v1 = download_version(MODEL, "1", tmp_path / "dl_v1")
    assert (v1 / "exports" / "image_encoder.onnx").read_bytes() == b"onnx-bytes"
    assert (v1 / "exports" / "image_encoder.mlpackage" / "Manifest.json").is_file()


def test_nan_is_registered_not_promoted_and_missing_metric_is_an_error(experiment: str, students: list[Path]) -> None:
    import mlflow

    first = _promote(experiment, students[0], float("nan"), model="nan-model")
    assert first["version"] == 1 and not first["promoted"] and "not finite" in first["reason"]
    second = _promote(experiment, students[0], 0.2, model="nan-model")  # no champion yet -> takes the alias
    assert second["promoted"] and second["previous_champion"] is None
    with mlflow.start_run(experiment_id=experiment) as run, pytest.raises(KeyError, match="score"):
        promote_if_better(run.info.run_id, students[0], {}, {"x": 1.0}, MODEL, "score", "champion", STUDENT_FILE)
    with mlflow.start_run(experiment_id=experiment) as run, pytest.raises(FileNotFoundError, match="student"):
        promote_if_better(
            run.info.run_id, students[0].parent, {}, {"score": 1.0}, MODEL, "score", "champion", STUDENT_FILE
        )
