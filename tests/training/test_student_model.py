"""The student_model stage: a real tiny-vit student trained on tiny reinforced data."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from clipforge.files import path_sha256
from clipforge.stage_api import NullTracker, StageContext, StageOutcome
from tests.conftest import default_params, section, stage_gate, with_changes
from tests.training.student_helpers import DIMS, SCALES, caption, one_thread  # noqa: F401 (one_thread: autouse)
from training.data.augment import replay_aug
from training.data.reinforced import ReinforcedDataset, collate
from training.data.streaming import StreamingReinforced, read_meta, shard_urls
from training.models.open_clip_models import load_teachers
from training.models.students import build_student, save_student
from training.student_model import run, run_fingerprint
from training.trainers.checkpointing import CheckpointStore
from training.trainers.online_teachers import OnlineTeachers
from training.trainers.student import seed_everything, train_student


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
    # params.yaml's student trains with CLIP-KD's FD beside MobileCLIP's loss: both are logged.
    logged = {"loss", "loss_clip", "loss_distill", "lr", "logit_scale", "loss_fd", "loss_kd"}
    assert set(tracker.metrics[0][0]) == logged
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


_STAGE_SCRIPT = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from clipforge.stage_api import StageContext
from tests.conftest import default_params, section
from training.data.augment import replay_aug
from training.data.reinforced import ReinforcedDataset, collate
from training.models.open_clip_models import load_teachers
from training.data.streaming import StreamingReinforced, read_meta, shard_urls
from training.student_model import run, run_fingerprint
from training.trainers.checkpointing import CheckpointStore
from training.trainers.student import seed_everything, train_student
from training.trainers.online_teachers import OnlineTeachers
params = default_params().model_copy(update={"student_model": section("student_model", **json.loads(sys.argv[1]))})
out = Path(sys.argv[3])
out.mkdir()
run(StageContext(name="student_model", params=params, inputs={"reinforced_dataset": Path(sys.argv[2])}, out_dir=out, show_progress=False))
"""


def _run_stage(dr_folder: Path, out: Path, **changes: Any) -> StageOutcome:
    params = default_params().model_copy(update={"student_model": section("student_model", **changes)})
    out.mkdir()
    ctx = StageContext(
        name="student_model", params=params, inputs={"reinforced_dataset": dr_folder}, out_dir=out, show_progress=False
    )
    return run(ctx)


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_weights(dr_folder: Path, tmp_path: Path) -> None:
    # 12 samples, batch 4: 3 batches an epoch, so the kill lands mid-epoch as often as not.
    # MFD draws its masks from the global RNG, so the resume must restore it to match.
    training = {
        "steps": 150,
        "batch_size": 4,
        "warmup_steps": 5,
        "log_every": 10,
        "kd": {"icl": 1.0, "fd": 100.0, "mfd": 10.0},
    }
    straight = _run_stage(dr_folder, tmp_path / "straight", **training, checkpoint_dir=str(tmp_path / "ckpt_a"))
    assert straight.summary["resumed_from_step"] == 0
    assert not (tmp_path / "ckpt_a" / "student_model").exists() or not any((tmp_path / "ckpt_a").rglob("*.pt"))

    store = {"checkpoint_every": 5, "keep_checkpoints": 2, "checkpoint_dir": str(tmp_path / "ckpt_b")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _STAGE_SCRIPT,
            json.dumps({**training, **store}),
            str(dr_folder),
            str(tmp_path / "killed"),
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    deadline = time.monotonic() + 120
    try:
        while not [p for p in (tmp_path / "ckpt_b").rglob("step_*.pt") if int(p.stem[5:]) >= 20]:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint at step 20 within 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    kept = sorted(int(p.stem[5:]) for p in (tmp_path / "ckpt_b").rglob("step_*.pt"))
    assert 1 <= len(kept) <= 2 and kept[-1] < 150, kept

    resumed = _run_stage(dr_folder, tmp_path / "resumed", **training, **store)
    assert kept[-1] <= resumed.summary["resumed_from_step"] < 150
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    for part in ("model", "kd_loss"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.allclose(a[part][key], b[part][key], atol=1e-6), (part, key)
    history_a = pd.read_parquet(tmp_path / "straight" / "history.parquet")
    history_b = pd.read_parquet(tmp_path / "resumed" / "history.parquet")
    pd.testing.assert_frame_equal(
        history_a.drop(columns=["grad_norm"]), history_b.drop(columns=["grad_norm"]), atol=1e-6
    )
    assert not (tmp_path / "ckpt_b").exists()  # published: the run's checkpoints are gone


def test_a_changed_training_does_not_resume_another_runs_checkpoint(dr_folder: Path, tmp_path: Path) -> None:
    cfg = section("student_model", steps=4, batch_size=4)
    same = run_fingerprint(cfg, dr_folder)
    assert run_fingerprint(with_changes(cfg, log_every=3, checkpoint_dir="elsewhere"), dr_folder) == same
    assert run_fingerprint(with_changes(cfg, lr=1e-4), dr_folder) != same
    assert run_fingerprint(with_changes(cfg, kd={"fd": 1.0}), dr_folder) != same


@pytest.mark.slow
def test_two_processes_match_one_with_the_whole_batch(dr_folder: Path, tmp_path: Path) -> None:
    """torchrun's launcher, gloo: 2 x 4 samples per step equal 1 x 8, loss and weights.

    tiny-vit: layer norms only. A BatchNorm tower normalises each rank's share by its own
    statistics on CPU (SyncBatchNorm is GPU-only), so it matches only approximately.
    """
    training = {
        "model": "tiny-vit",
        "steps": 6,
        "batch_size": 8,
        "warmup_steps": 2,
        "lr": 1e-3,
        "kd": {"crd": 1.0, "icl": 1.0, "fd": 100.0},
    }
    one = _run_stage(dr_folder, tmp_path / "one", **training, checkpoint_dir=str(tmp_path / "c1"))
    two = _run_stage(dr_folder, tmp_path / "two", **training, nproc=2, checkpoint_dir=str(tmp_path / "c2"))
    assert (one.summary["processes"], two.summary["processes"]) == (1, 2)
    h1 = pd.read_parquet(tmp_path / "one" / "history.parquet")
    h2 = pd.read_parquet(tmp_path / "two" / "history.parquet")
    for column in ("loss", "loss_clip", "loss_distill", "loss_crd", "loss_icl", "loss_fd", "grad_norm"):
        np.testing.assert_allclose(h2[column], h1[column], rtol=1e-4, atol=1e-5, err_msg=column)
    assert h1["loss"].iloc[-1] != pytest.approx(h1["loss"].iloc[0], rel=1e-3)  # the weights moved
    a = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    for part in ("model", "kd_loss"):
        for key in a[part]:
            assert torch.allclose(a[part][key], b[part][key], atol=1e-5), (part, key)
    assert not (tmp_path / "two" / "distributed_result.pt").exists()


def test_online_teachers_embed_the_view_and_captions_the_student_sees(
    dr_folder: Path, teacher_dir: Path, tmp_path: Path
) -> None:
    teachers = load_teachers(teacher_dir)
    online = OnlineTeachers(teachers, torch.device("cpu"))
    student_tok = build_student("tiny-vit").tokenizer()
    # A teacher at another resolution than the student gets the same view replayed at its size.
    resized = ReinforcedDataset.from_stage_dir(
        dr_folder, student_tok, 64, seed=0, teacher_inputs=[(teachers[0].tokenize, 64), (teachers[1].tokenize, 32)]
    )
    item = resized[2]
    a, _ = resized.choice(2)
    assert "t_pixels/0" not in item
    assert torch.equal(item["t_pixels/1"], replay_aug(resized._images[2], resized._params[2][a], 32))

    dataset = ReinforcedDataset.from_stage_dir(
        dr_folder, student_tok, 64, seed=0, teacher_inputs=online.loader_inputs()
    )
    batch = collate([dataset[i] for i in range(4)])
    t_img, t_real, t_syn = online.embed(batch, batch["pixels"], with_synthetic=True)
    assert t_img.shape == t_real.shape == t_syn.shape == (4, sum(online.dims))
    d0 = online.dims[0]
    with torch.no_grad():
        # Independently: each teacher's own encoders on the replayed view and the raw captions.
        for k, part in enumerate((slice(0, d0), slice(d0, None))):
            assert torch.allclose(t_img[:, part], teachers[k].encode_image(batch["pixels"]), atol=1e-5)
            real_captions = [caption(int(uid, 16)) for uid in dataset.uids[:4]]
            assert torch.allclose(t_real[:, part], teachers[k].encode_text(real_captions), atol=1e-5)
    assert batch["t_img"].shape[1] == sum(DIMS) != t_img.shape[1]  # the stored ones are another ensemble's

    # Through the stage: CLIP-KD's recipe with the teachers run online trains and is reported.
    params = default_params().model_copy(
        update={
            "student_model": section(
                "student_model",
                model="tiny-vit",
                steps=3,
                batch_size=4,
                warmup_steps=1,
                distill_lambda=0.0,
                teacher_embeddings="online",
                kd={"crd": 1.0, "icl": 1.0, "fd": 2000.0},
                checkpoint_dir=str(tmp_path / "ckpt"),
            )
        }
    )
    out = tmp_path / "student_model"
    out.mkdir()
    inputs_ = {"reinforced_dataset": dr_folder, "teacher_models": teacher_dir}
    outcome = run(StageContext(name="student_model", params=params, inputs=inputs_, out_dir=out, show_progress=False))
    assert outcome.summary["teacher_embeddings"] == "online"
    assert outcome.summary["kd"] == {"crd": 1.0, "icl": 1.0, "fd": 2000.0}
    # The summary names the sizes the targets had: the online teachers', not the stored ones'.
    assert outcome.summary["teacher_dims"] == online.dims != list(DIMS)
    assert outcome.summary["teacher_scales"] == pytest.approx(online.scales)
    history = pd.read_parquet(out / "history.parquet")
    assert np.isfinite(history[["loss", "loss_crd", "loss_icl", "loss_fd"]].to_numpy()).all()
    # The stored embeddings of dr_folder are random, the teachers' are not: the losses differ.
    stored = _run_stage(
        dr_folder,
        tmp_path / "stored",
        model="tiny-vit",
        steps=3,
        batch_size=4,
        warmup_steps=1,
        distill_lambda=0.0,
        kd={"crd": 1.0, "icl": 1.0, "fd": 2000.0},
        checkpoint_dir=str(tmp_path / "ckpt2"),
    )
    assert stored.summary["teacher_embeddings"] == "stored"
    stored_history = pd.read_parquet(tmp_path / "stored" / "history.parquet")
    assert stored_history["loss_crd"].iloc[0] != pytest.approx(history["loss_crd"].iloc[0], rel=1e-3)
    assert stored_history["loss_clip"].iloc[0] == pytest.approx(history["loss_clip"].iloc[0], rel=1e-5)


def test_stage_trains_from_the_stream_and_counts_its_skips(dr_folder: Path, tmp_path: Path) -> None:
    outcome = _run_stage(dr_folder, tmp_path / "out", loader="stream", steps=6, batch_size=4, warmup_steps=1)
    assert outcome.summary["loader"] == "stream"
    assert outcome.summary["samples"] == 24  # drawn: 6 steps of 4 (a stream has no length)
    # Sample 12 has no image: met once per pass over the shard (two passes in 6 steps of 4).
    assert set(outcome.summary["skipped_by_reason"]) == {"missing_image"}
    assert 1 <= outcome.summary["skipped_by_reason"]["missing_image"] <= 2
    assert math.isfinite(outcome.summary["final_loss"])


class _Stop(RuntimeError):
    pass


def test_a_stream_resumes_mid_epoch_to_the_uninterrupted_weights(dr_folder: Path, tmp_path: Path) -> None:
    """Killed after step 4 (checkpoint at 2 and 4, mid second epoch), resumed to step 7."""
    cfg = section("student_model", loader="stream", steps=7, batch_size=4, warmup_steps=1, checkpoint_every=2)

    def fresh() -> tuple[Any, StreamingReinforced]:
        seed_everything(cfg.seed)
        model = build_student(cfg.model)
        stream = StreamingReinforced(
            shard_urls(dr_folder), read_meta(dr_folder), model.tokenizer(), 64, 4, seed=cfg.seed, shuffle_buffer=5
        )
        return model, stream

    model, stream = fresh()
    straight = train_student(model, stream, cfg, DIMS, SCALES, device=torch.device("cpu"))

    def stop_after_4(step: int) -> float:
        if step == 4:
            raise _Stop
        return 0.0

    store = CheckpointStore(tmp_path / "ckpt", 2)
    model, stream = fresh()
    with pytest.raises(_Stop):
        train_student(
            model, stream, cfg, DIMS, SCALES, device=torch.device("cpu"), checkpoints=store, after_step=stop_after_4
        )
    assert store.steps() == [2, 4]
    model, stream = fresh()
    resumed = train_student(model, stream, cfg, DIMS, SCALES, device=torch.device("cpu"), checkpoints=store)
    assert resumed.resumed_from_step == 4
    for name, tensor in straight.final_state["model"].items():
        torch.testing.assert_close(resumed.final_state["model"][name], tensor, msg=name)
    pd.testing.assert_frame_equal(
        resumed.history.drop(columns=["grad_norm"]), straight.history.drop(columns=["grad_norm"])
    )
