"""The student_model stage: a real tiny-vit student trained on tiny reinforced data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clipforge.files import path_sha256
from clipforge.stage_api import NullTracker, StageContext
from tests.conftest import default_params, section, stage_gate
from tests.training.student_helpers import DIMS, SCALES, caption, one_thread  # noqa: F401 (one_thread: autouse)
from training.models.students import build_student, save_student
from training.student_model import run


def test_stage_run_writes_every_artifact(dr_folder: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    params = default_params().model_copy(
        update={"student_model": section("student_model", steps=3, batch_size=8, warmup_steps=1, log_every=2)}
    )
    tracker = NullTracker()
    out = tmp_path / "student_model"
    out.mkdir()
    ctx = StageContext(
        name="student_model",
        params=params,
        inputs={"reinforced_dataset": dr_folder},
        out_dir=out,
        tracker=tracker,
        show_progress=False,
    )
    outcome = run(ctx)
    assert torch.get_num_threads() == threads  # the stage leaves the thread count alone
    assert outcome.summary["init_checkpoint"] is None

    for rel in (
        "model/student.json",
        "model/weights.pt",
        "history.parquet",
        "checkpoint.pt",
        "previews/loss_curve.png",
    ):
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    assert (out / "previews/loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    history = pd.read_parquet(out / "history.parquet")
    assert list(history["step"]) == [1, 2, 3]
    assert {"loss", "loss_clip", "loss_distill", "lr", "logit_scale"} <= set(history.columns)
    assert np.isfinite(history["loss"]).all()

    # weights_only: a checkpoint must load without unpickling arbitrary objects.
    checkpoint = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["step"] == 3
    assert {"model", "optimizer", "rng", "epoch", "batch_in_epoch"} <= set(checkpoint)
    assert {"python", "numpy", "torch"} <= set(checkpoint["rng"])

    manifest = outcome.manifest
    assert set(manifest["artifact"]) >= {
        "model/weights.pt",
        "history.parquet",
        "checkpoint.pt",
        "previews/loss_curve.png",
    }
    assert manifest["artifact"].is_unique
    assert (manifest["bytes"] > 0).all()
    assert manifest["final_loss"].nunique() == 1 and math.isfinite(manifest["final_loss"].iloc[0])
    assert all(len(h) == 64 for h in manifest["sha256"])
    assert stage_gate("student_model", manifest, params).passed

    assert set(outcome.metrics) == {"final_loss", "steps", "samples_per_second", "train_seconds"}
    assert outcome.metrics["steps"] == 3 and outcome.metrics["samples_per_second"] > 0
    assert outcome.previews == {"loss_curve": "previews/loss_curve.png"}
    # The sample without an image is counted, not silently lost.
    assert outcome.summary["samples"] == 12
    assert outcome.summary["skipped_by_reason"] == {"missing_image": 1}
    assert outcome.summary["teacher_scales"] == SCALES

    # Tracker: every log_every steps and at the last step, the model folder as an artifact.
    assert [step for _, step in tracker.metrics] == [2, 3]
    assert set(tracker.metrics[0][0]) == {"loss", "loss_clip", "loss_distill", "lr", "logit_scale"}
    assert (out / "model", "model") in tracker.artifacts


def test_stage_records_the_init_checkpoint_content_hash(dr_folder: Path, tmp_path: Path) -> None:
    """DVC tracks init_checkpoint as a path; the summary ties the run to the file's bytes."""
    start = tmp_path / "start"
    save_student(build_student(section("student_model").model).eval(), start)
    cfg = section("student_model", steps=1, batch_size=8, warmup_steps=1, init_checkpoint=str(start))
    out = tmp_path / "student_model"
    out.mkdir()
    ctx = StageContext(
        name="student_model",
        params=default_params().model_copy(update={"student_model": cfg}),
        inputs={"reinforced_dataset": dr_folder},
        out_dir=out,
        tracker=NullTracker(),
        show_progress=False,
    )
    recorded = run(ctx).summary["init_checkpoint"]
    assert recorded == {"path": str(start), "sha256": path_sha256(start)}
    assert len(recorded["sha256"]) == 64
