"""The student trainer: it learns, repeats under a seed, caps the temperature, resumes its RNGs."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tests.conftest import section
from tests.training.student_helpers import DIMS, SCALES, caption, one_thread  # noqa: F401 (one_thread: autouse)
from training.models.students import build_student, load_student
from training.student_model import save_outputs
from training.trainers.student import restore_rng_state, rng_state, train_student


class FixedBatch(Dataset):
    """In-memory items of the reinforced loader's shape; the same views every epoch."""

    def __init__(self, n: int, *, bad_syn_tokens: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        tok = build_student("tiny-vit").tokenizer()
        self.pixels = torch.rand(n, 3, 64, 64, generator=g)
        self.tokens_real = tok([caption(i) for i in range(n)])
        self.tokens_syn = tok([f"picture of {caption(i)}" for i in range(n)])
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


def test_clip_kd_terms_train_beside_the_mobileclip_loss(tmp_path: Path) -> None:
    weights = {"crd": 1.0, "icl": 1.0, "fd": 2000.0, "mfd": 100.0, "gd": 0.0, "afd": 0.0}
    cfg = section("student_model", steps=3, batch_size=4, warmup_steps=1, lr=1e-2, distill_lambda=0.5, kd=weights)
    torch.manual_seed(0)
    model = build_student("tiny-vit")
    assert model.info.embed_dim not in DIMS  # the projections are real linear maps here
    result = train_student(model, FixedBatch(6), cfg, DIMS, SCALES)
    history = result.history
    kd_columns = ["loss_crd", "loss_fd", "loss_mfd", "loss_icl", "loss_kd"]
    assert set(kd_columns) <= set(history.columns) and "loss_gd" not in history
    assert np.isfinite(history[kd_columns].to_numpy()).all()
    # The logged total is MobileCLIP's (1 - lambda) L_CLIP + lambda L_distill plus the KD sum.
    expected = 0.5 * history["loss_clip"] + 0.5 * history["loss_distill"] + history["loss_kd"]
    np.testing.assert_allclose(history["loss"], expected, rtol=1e-5)
    weighted = sum(w * history[f"loss_{t}"] for t, w in weights.items() if w > 0)
    np.testing.assert_allclose(history["loss_kd"], weighted, rtol=1e-5)
    # The projections and ICL's scale trained in the student's optimiser and reach the checkpoint.
    kd = result.kd_loss
    assert kd is not None
    torch.manual_seed(0)
    build_student("tiny-vit")  # same draws as the model above, then the projections' init
    untrained = type(kd)(cfg.kd.weights(), model.info.embed_dim, DIMS, SCALES)
    assert not torch.allclose(kd.projections.image[0].weight, untrained.projections.image[0].weight)
    assert float(kd.icl_logit_scale.detach()) != pytest.approx(float(untrained.icl_logit_scale.detach()))
    optimised = {id(p) for group in result.optimizer.param_groups for p in group["params"]}
    assert {id(p) for p in kd.parameters()} <= optimised
    save_outputs(model, result, cfg, tmp_path)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["kd_loss"]
    assert set(saved) == set(kd.state_dict()) and "icl_logit_scale" in saved


@pytest.mark.parametrize("accum_steps", [2, 4])
def test_gradient_accumulation_matches_the_whole_batch(accum_steps: int) -> None:
    """Micro-batches with cached features give the whole batch's loss and gradients at every
    step, with the logit scale, CLIP-KD's learned parts and MFD's masks (replayed RNG) in play.
    (Gradients, not weights after Adam: its first steps are ~lr * sign(g), which turns 1e-7
    float-order noise in near-zero gradients into 1e-3 differences.)"""
    kd = {"crd": 1.0, "icl": 1.0, "fd": 100.0, "mfd": 10.0, "gd": 0.0, "afd": 0.0}
    # The loss tolerance below holds for the float noise that Adam's sign-like first steps carry
    # into steps 2-3, which scales with lr: pinned at the lr it was set for, not params.yaml's
    # (at 0.024 step 3's loss differs by 2.8e-5 relative with 4 micro-batches).
    lr = 0.006
    runs = []
    for accum in (1, accum_steps):
        cfg = section("student_model", steps=3, batch_size=8, warmup_steps=1, seed=4, accum_steps=accum, kd=kd, lr=lr)
        torch.manual_seed(cfg.seed)
        model = build_student("tiny-vit")
        grads: list[dict[str, torch.Tensor]] = []
        kd_grads: list[list[torch.Tensor]] = []
        holder: dict[str, Any] = {}

        def capture(step: int, model: nn.Module = model, grads: list = grads, holder: dict = holder) -> float:
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            return 0.0

        result = train_student(model, FixedBatch(8), cfg, DIMS, SCALES, device=torch.device("cpu"), after_step=capture)
        kd_grads.append([p.grad.clone() for p in result.kd_loss.parameters() if p.grad is not None])
        runs.append((result, grads, kd_grads))
    (whole, whole_grads, whole_kd), (micro, micro_grads, micro_kd) = runs
    np.testing.assert_allclose(micro.history["loss"], whole.history["loss"], rtol=1e-5)
    assert len(whole_grads) == 3 and "clip.logit_scale" in whole_grads[0]
    for step, (a, b) in enumerate(zip(whole_grads, micro_grads, strict=True)):
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=f"step {step + 1}: {name}")
    assert whole_kd[0]  # CLIP-KD's ICL scale (and projections when sizes differ) had gradients
    for a, b in zip(whole_kd[0], micro_kd[0], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_bf16_towers_feed_float32_losses_with_clip_kd_terms() -> None:
    """Autocast towers (CUDA's default, any device's with precision bf16) with CLIP-KD's
    projections, which run outside autocast: the losses see float32 features."""
    kd = {"crd": 1.0, "icl": 1.0, "fd": 100.0, "mfd": 0.0, "gd": 0.0, "afd": 1.0}
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = section("student_model", steps=2, batch_size=4, warmup_steps=1, seed=2, precision=precision, kd=kd)
        torch.manual_seed(cfg.seed)
        result = train_student(build_student("tiny-vit"), FixedBatch(4), cfg, DIMS, SCALES, device=torch.device("cpu"))
        losses[precision] = result.history["loss"].to_numpy()
    assert np.isfinite(losses["bf16"]).all()
    # bf16 towers round, so the loss moves a little, not a lot.
    np.testing.assert_allclose(losses["bf16"], losses["fp32"], rtol=0.05)
    assert not np.array_equal(losses["bf16"], losses["fp32"])
