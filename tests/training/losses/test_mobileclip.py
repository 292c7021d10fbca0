"""The MobileCLIP loss: CLIP InfoNCE, ensemble targets, distillation, the combined step loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses.mobileclip import clip_loss, distill_loss, distill_targets, mobileclip_loss


def _unit(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


def _ensemble(b: int, dims: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated per-teacher-normalised embeddings [B, sum dims], text near its image."""
    imgs, txts = [], []
    for k, d in enumerate(dims):
        img = _unit(b, d, seed=seed + 10 * k)
        txts.append(F.normalize(img + 0.7 * _unit(b, d, seed=seed + 10 * k + 1), dim=-1))
        imgs.append(img)
    return torch.cat(imgs, dim=1), torch.cat(txts, dim=1)


def test_clip_loss_matches_manual_infonce() -> None:
    img, txt = _unit(6, 8, seed=0), _unit(6, 8, seed=1)
    logits = 20.0 * img @ txt.T
    log_i = logits.log_softmax(dim=1).diag()
    log_t = logits.T.log_softmax(dim=1).diag()
    expected = -0.5 * (log_i.mean() + log_t.mean())
    assert torch.allclose(clip_loss(img, txt, 20.0), expected, atol=1e-6)
    # Matched pairs score lower than mismatched ones.
    assert clip_loss(img, img, 20.0) < clip_loss(img, txt, 20.0)


def test_distill_ce_equals_kl_plus_target_entropy() -> None:
    b = 7
    t_img, t_txt = _ensemble(b, [8, 12], seed=3)
    p_i2t, p_t2i = distill_targets(t_img, t_txt, [8, 12], [100.0, 60.0])
    s_img, s_txt = _unit(b, 16, seed=4), _unit(b, 16, seed=5)
    scale = 30.0
    ce = distill_loss(s_img, s_txt, scale, p_i2t, p_t2i)

    logits = scale * s_img @ s_txt.T
    kl_i = F.kl_div(logits.log_softmax(dim=1), p_i2t, reduction="batchmean")
    kl_t = F.kl_div(logits.T.log_softmax(dim=1), p_t2i, reduction="batchmean")
    ent_i = -(p_i2t * p_i2t.clamp_min(1e-30).log()).sum(dim=1).mean()
    ent_t = -(p_t2i * p_t2i.clamp_min(1e-30).log()).sum(dim=1).mean()
    assert torch.allclose(ce, 0.5 * (kl_i + ent_i + kl_t + ent_t), atol=1e-5)
    # Targets are distributions.
    assert torch.allclose(p_i2t.sum(dim=1), torch.ones(b), atol=1e-6)
    assert torch.allclose(p_t2i.sum(dim=1), torch.ones(b), atol=1e-6)


def test_ensemble_is_averaged_after_softmax_not_over_logits() -> None:
    # Crafted: teacher A is sharp and sure of the diagonal (scale 20), teacher B mildly
    # prefers the anti-diagonal (scale 2). Averaging probabilities gives about [0.56, 0.44]
    # per row; averaging logits gives about [1.0, 0.0]: A's large logits would dominate.
    eye = torch.eye(2)
    anti = eye.flip(0)
    t_img = torch.cat([eye, eye], dim=1)  # [2, 4]: teacher A dims 0-1, teacher B dims 2-3
    t_txt = torch.cat([eye, anti], dim=1)
    p_i2t, p_t2i = distill_targets(t_img, t_txt, [2, 2], [20.0, 2.0])

    la = 20.0 * eye @ eye.T
    lb = 2.0 * eye @ anti.T
    after = 0.5 * (la.softmax(1) + lb.softmax(1))
    before = (0.5 * (la + lb)).softmax(1)
    assert torch.allclose(p_i2t, after, atol=1e-6)
    assert torch.allclose(p_t2i, 0.5 * (la.T.softmax(1) + lb.T.softmax(1)), atol=1e-6)
    # Row 0 by hand: A gives softmax([20, 0]), B gives softmax([0, 2]).
    a0 = 1 / (1 + math.exp(-20))
    b0 = 1 / (1 + math.exp(2))
    assert torch.allclose(p_i2t[0], torch.tensor([0.5 * (a0 + b0), 0.5 * (2 - a0 - b0)]), atol=1e-6)
    assert (after - before).abs().max() > 0.4


def test_each_teacher_uses_its_own_scale() -> None:
    b, dims = 6, [8, 12]
    t_img, t_txt = _ensemble(b, dims, seed=7)
    first_img, second_img = t_img.split(dims, dim=1)
    first_txt, second_txt = t_txt.split(dims, dim=1)

    def single(img: torch.Tensor, txt: torch.Tensor, tau: float) -> torch.Tensor:
        return distill_targets(img, txt, [img.shape[1]], [tau])[0]

    p_a, _ = distill_targets(t_img, t_txt, dims, [10.0, 6.0])
    p_b, _ = distill_targets(t_img, t_txt, dims, [10.0, 2.0])
    # Changing teacher 2's scale changes the target ...
    assert not torch.allclose(p_a, p_b, atol=1e-3)
    # ... only through teacher 2's part: teacher 1's part stays exactly what it was.
    part1_a = 2 * p_a - single(second_img, second_txt, 6.0)
    part1_b = 2 * p_b - single(second_img, second_txt, 2.0)
    expected1 = single(first_img, first_txt, 10.0)
    assert torch.allclose(part1_a, expected1, atol=1e-5)
    assert torch.allclose(part1_b, expected1, atol=1e-5)
    # And a shared scale (the public patch's pitfall) gives a different target.
    p_shared, _ = distill_targets(t_img, t_txt, dims, [10.0, 10.0])
    assert not torch.allclose(p_a, p_shared, atol=1e-3)


def test_lambda_zero_is_clip_only_and_one_is_distill_only() -> None:
    b, dims = 5, [8, 8]
    t_img, t_txt_r = _ensemble(b, dims, seed=11)
    _, t_txt_s = _ensemble(b, dims, seed=12)
    s_img, s_r, s_s = _unit(b, 16, seed=13), _unit(b, 16, seed=14), _unit(b, 16, seed=15)
    args = (s_img, s_r, s_s, 25.0, t_img, t_txt_r, t_txt_s, dims, [100.0, 70.0])

    out0 = mobileclip_loss(*args, lam=0.0)
    expected_clip = clip_loss(s_img, s_r, 25.0) + clip_loss(s_img, s_s, 25.0)
    assert torch.allclose(out0["loss"], expected_clip, atol=1e-6)
    assert torch.allclose(out0["loss_clip"], expected_clip, atol=1e-6)

    out1 = mobileclip_loss(*args, lam=1.0)
    assert torch.allclose(out1["loss"], out1["loss_distill"], atol=1e-6)
    assert not torch.allclose(out0["loss"], out1["loss"], atol=1e-3)

    half = mobileclip_loss(*args, lam=0.5)
    assert torch.allclose(half["loss"], 0.5 * half["loss_clip"] + 0.5 * half["loss_distill"], atol=1e-6)
    assert torch.allclose(half["loss"], half["loss_real"] + half["loss_syn"], atol=1e-6)

    # Real captions only: no synthetic part.
    real_only = mobileclip_loss(s_img, s_r, None, 25.0, t_img, t_txt_r, None, dims, [100.0, 70.0], lam=0.0)
    assert "loss_syn" not in real_only
    assert torch.allclose(real_only["loss"], clip_loss(s_img, s_r, 25.0), atol=1e-6)
    with pytest.raises(ValueError, match="both"):
        mobileclip_loss(s_img, s_r, s_s, 25.0, t_img, t_txt_r, None, dims, [100.0, 70.0], lam=0.5)


def test_gradients_reach_student_embeddings_and_scale() -> None:
    b, dims = 6, [8, 12]
    t_img, t_txt_r = _ensemble(b, dims, seed=21)
    _, t_txt_s = _ensemble(b, dims, seed=22)
    raw = [torch.randn(b, 16, requires_grad=True) for _ in range(3)]
    logit_scale = torch.tensor(2.0, requires_grad=True)
    s_img, s_r, s_s = (F.normalize(x, dim=-1) for x in raw)
    out = mobileclip_loss(s_img, s_r, s_s, logit_scale.exp(), t_img, t_txt_r, t_txt_s, dims, [100.0, 60.0], lam=0.7)
    out["loss"].backward()
    for x in raw:
        assert x.grad is not None and x.grad.abs().sum() > 0
    assert logit_scale.grad is not None and logit_scale.grad.abs() > 0


def test_perfect_student_beats_shuffled_student() -> None:
    b, d, tau = 8, 16, 50.0
    t_img, t_txt = _ensemble(b, [d], seed=31)
    p_i2t, p_t2i = distill_targets(t_img, t_txt, [d], [tau])
    perfect = distill_loss(t_img, t_txt, tau, p_i2t, p_t2i)
    perm = torch.roll(torch.arange(b), 1)
    shuffled = distill_loss(t_img, t_txt[perm], tau, p_i2t, p_t2i)
    assert perfect < shuffled
    # The perfect student's CE equals the target entropy (KL is zero).
    entropy = -0.5 * ((p_i2t * p_i2t.log()).sum(1).mean() + (p_t2i * p_t2i.log()).sum(1).mean())
    assert torch.allclose(perfect, entropy, atol=1e-5)


def test_bad_shapes_are_clear_errors() -> None:
    t_img, t_txt = _ensemble(4, [8, 8], seed=41)
    with pytest.raises(ValueError, match="add up"):
        distill_targets(t_img, t_txt, [8, 4], [100.0, 100.0])
    with pytest.raises(ValueError, match="one scale per teacher"):
        distill_targets(t_img, t_txt, [8, 8], [100.0])
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(_unit(4, 8, seed=0), _unit(3, 8, seed=1), 10.0)
