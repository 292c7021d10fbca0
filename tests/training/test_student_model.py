"""The student_model stage: a real tiny-vit student trained on tiny reinforced data."""

from __future__ import annotations

import io
import math
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from clipforge.files import path_sha256
from clipforge.stage_api import NullTracker, StageContext
from tests.conftest import default_params, section, stage_gate
from training.data.augment import sample_aug_params
from training.data.dr_format import DRMeta, DRSample, write_shard
from training.models.students import build_student, load_student, save_student
from training.optim import param_groups
from training.student_model import rng_state, run, save_outputs, train_student
from training.trainers.student import restore_rng_state

DIMS = [8, 12]  # two stand-in teachers
SCALES = [100.0, 50.0]
COLORS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "star"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # The shared 2-core test machine is often oversubscribed; two OpenMP threads then spin-wait
    # on each other and run 10-100x slower. One thread keeps these tests fast; it is restored
    # after each test, and the stage itself never changes the thread count.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _caption(i: int) -> str:
    return f"a {COLORS[i % 4]} {SHAPES[i % 3]} number {i}"


def _unit_rows(rng: np.random.Generator, rows: int) -> np.ndarray:
    """[rows, sum DIMS]: each teacher's part L2-normalised."""
    parts = [rng.normal(size=(rows, d)) for d in DIMS]
    return np.concatenate([p / np.linalg.norm(p, axis=1, keepdims=True) for p in parts], axis=1).astype(np.float32)


def _jpg(i: int) -> bytes:
    rgb = np.zeros((40, 48, 3), dtype=np.uint8)
    rgb[..., i % 3] = 60 + 15 * i
    rgb[10 + i % 10 : 30, 8:40, (i + 1) % 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dr_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published-looking reinforced_dataset folder: 12 good samples and 1 without an image."""
    folder = tmp_path_factory.mktemp("reinforced_dataset")
    rng = np.random.default_rng(0)
    samples = []
    for i in range(13):
        samples.append(
            DRSample.from_combined(
                uid=f"{i:032x}",
                param_aug=[sample_aug_params(rng, 48, 40) for _ in range(2)],
                image_emb=_unit_rows(rng, 2),
                text_emb=_unit_rows(rng, 3),  # real caption + 2 synthetic
                syn_text=[f"{_caption(i)} seen", f"picture of {_caption(i)}"],
                key=f"s{i:04d}",
                jpg=None if i == 12 else _jpg(i),
                txt=_caption(i),
                sha256="0" * 64,
            )
        )
    write_shard(folder / "shards" / "00000.tar", samples)
    DRMeta(
        teachers=("t0", "t1"),
        teacher_dims=tuple(DIMS),
        logit_scales=tuple(SCALES),
        num_augmentations=2,
        num_captions=2,
        image_sizes=(64, 64),
    ).write(folder)
    return folder


class FixedBatch(Dataset):
    """In-memory items of the reinforced loader's shape; the same views every epoch."""

    def __init__(self, n: int, *, bad_syn_tokens: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        tok = build_student("tiny-vit").tokenizer()
        self.pixels = torch.rand(n, 3, 64, 64, generator=g)
        self.tokens_real = tok([_caption(i) for i in range(n)])
        self.tokens_syn = tok([f"picture of {_caption(i)}" for i in range(n)])
        if bad_syn_tokens:
            self.tokens_syn.fill_(10**7)  # out of vocabulary: any use of them fails loudly
        base = F.normalize(torch.randn(n, sum(DIMS), generator=g), dim=-1)
        self.t_img = base
        self.t_txt_real = F.normalize(base + 0.3 * torch.randn(n, sum(DIMS), generator=g), dim=-1)
        self.t_txt_syn = F.normalize(base + 0.3 * torch.randn(n, sum(DIMS), generator=g), dim=-1)

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "pixels": self.pixels[i],
            "tokens_real": self.tokens_real[i],
            "tokens_syn": self.tokens_syn[i],
            "t_img": self.t_img[i],
            "t_txt_real": self.t_txt_real[i],
            "t_txt_syn": self.t_txt_syn[i],
        }


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


def test_overfits_a_fixed_batch_and_reloads_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_student("tiny-vit")
    data = FixedBatch(8)
    cfg = section("student_model", steps=30, batch_size=8, warmup_steps=3, lr=1e-3, distill_lambda=0.5, log_every=5)
    result = train_student(model, data, cfg, DIMS, SCALES)
    loss = result.history["loss"].to_numpy()
    assert len(loss) == 30
    assert loss[-5:].mean() < 0.6 * loss[:3].mean(), loss
    assert result.history["lr"].iloc[2] == pytest.approx(1e-3)  # end of warmup
    assert result.history["lr"].iloc[-1] < 1e-4  # cosine decays toward 0

    save_outputs(model, result, cfg, tmp_path)
    reloaded = load_student(tmp_path / "model")
    model.eval()
    with torch.no_grad():
        batch = {k: torch.stack([data[i][k] for i in range(4)]) for k in ("pixels", "tokens_real")}
        assert torch.allclose(reloaded.encode_image(batch["pixels"]), model.encode_image(batch["pixels"]), atol=1e-6)
        assert torch.allclose(
            reloaded.encode_text(batch["tokens_real"]), model.encode_text(batch["tokens_real"]), atol=1e-6
        )
        fresh = build_student("tiny-vit").eval()
        assert not torch.allclose(fresh.encode_image(batch["pixels"]), model.encode_image(batch["pixels"]), atol=1e-3)


def test_real_captions_only_never_touches_synthetic_ones() -> None:
    torch.manual_seed(0)
    data = FixedBatch(4, bad_syn_tokens=True)
    cfg = section("student_model", steps=2, batch_size=4, warmup_steps=1, use_synthetic_captions=False)
    result = train_student(build_student("tiny-vit"), data, cfg, DIMS, SCALES)
    assert np.isfinite(result.history["loss"]).all()
    with pytest.raises(IndexError):  # the same data with synthetic captions on does use them
        train_student(
            build_student("tiny-vit"), data, cfg.model_copy(update={"use_synthetic_captions": True}), DIMS, SCALES
        )


def test_seeded_runs_repeat_and_logit_scale_is_capped() -> None:
    cfg = section("student_model", steps=2, batch_size=4, warmup_steps=1, seed=3)
    histories = []
    for _ in range(2):
        torch.manual_seed(cfg.seed)
        model = build_student("tiny-vit")
        with torch.no_grad():
            model.logit_scale.fill_(6.0)  # exp(6) = 403 > the cap of 100
        histories.append(train_student(model, FixedBatch(6), cfg, DIMS, SCALES).history)
        assert float(model.logit_scale.detach().exp()) <= 100.0 + 1e-4
    assert (histories[0]["logit_scale"] <= 100.0 + 1e-4).all()
    pd.testing.assert_frame_equal(histories[0].drop(columns=["grad_norm"]), histories[1].drop(columns=["grad_norm"]))


def test_no_weight_decay_on_biases_norms_scale_and_embeddings() -> None:
    model = build_student("tiny-vit")
    decay_group, no_decay_group = param_groups(model, 0.2)
    assert decay_group["weight_decay"] == 0.2 and no_decay_group["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for p in no_decay_group["params"]}
    decay = {names[id(p)] for p in decay_group["params"]}
    assert "clip.logit_scale" in no_decay
    assert "clip.token_embedding.weight" in no_decay and "clip.positional_embedding" in no_decay
    assert all(not n.endswith(".bias") for n in decay)
    assert all("ln" not in n.split(".")[-2] for n in decay if n.endswith("weight"))
    assert any("attn.in_proj_weight" in n for n in decay) and "clip.text_projection" in decay
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


def test_too_small_dataset_is_a_clear_error() -> None:
    cfg = section("student_model", steps=1, batch_size=4)
    with pytest.raises(ValueError, match="at least 2"):
        train_student(build_student("tiny-vit"), FixedBatch(1), cfg, DIMS, SCALES)


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path: Path) -> None:
    """Exact resume needs every RNG back, read by the safe loader."""
    random.seed(1)
    np.random.seed(2)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    torch.manual_seed(3)
    torch.save({"rng": rng_state()}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.standard_normal(3), np.random.random(), torch.rand(3))

    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (random.random(), np.random.standard_normal(3), np.random.random(), torch.rand(3))
    assert again[0] == expected[0]
    np.testing.assert_array_equal(again[1], expected[1])
    assert again[2] == expected[2]
    assert torch.equal(again[3], expected[3])


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
