"""CLIP-KD's loss family: each term against a loop-based reference written here, with equal and
unequal embedding sizes, single process; the combined module's learned parts and its masking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses.afd import FeatureFusion, afd_loss
from training.losses.clip_kd import ClipKDLoss
from training.losses.crd import crd_loss
from training.losses.fd import fd_loss
from training.losses.gd import contrastive_grads, gd_loss
from training.losses.icl import icl_loss
from training.losses.mfd import mfd_loss
from training.losses.mobileclip import clip_loss
from training.losses.projection import TeacherProjections
from training.models.masking import mask_pixel_patches
from training.models.students import build_student

B = 5


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


def _sim(a: torch.Tensor, b: torch.Tensor, scale: float) -> list[list[float]]:
    return [[scale * _dot(a[i], b[j]) for j in range(len(b))] for i in range(len(a))]


def _transpose(m: list[list[float]]) -> list[list[float]]:
    return [list(row) for row in zip(*m, strict=True)]


def _ce_diag(logits: list[list[float]]) -> float:
    return -sum(math.log(_softmax(row)[i]) for i, row in enumerate(logits)) / len(logits)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    flat_a, flat_b = a.flatten().tolist(), b.flatten().tolist()
    return sum((x - y) ** 2 for x, y in zip(flat_a, flat_b, strict=True)) / len(flat_a)


SIZES = [pytest.param(16, 16, id="equal"), pytest.param(12, 20, id="unequal")]


@pytest.mark.parametrize(("d_s", "d_t"), SIZES)
def test_crd_is_the_kl_of_row_softmaxes_both_ways(d_s: int, d_t: int) -> None:
    s_img, s_txt, t_img, t_txt = (
        _unit(B, d_s, seed=0),
        _unit(B, d_s, seed=1),
        _unit(B, d_t, seed=2),
        _unit(B, d_t, seed=3),
    )

    def kl(p_logits: list[list[float]], q_logits: list[list[float]]) -> float:
        total = 0.0
        for p_row, q_row in zip(p_logits, q_logits, strict=True):
            p, q = _softmax(p_row), _softmax(q_row)
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
        return total / len(p_logits)

    student, teacher = _sim(s_img, s_txt, 20.0), _sim(t_img, t_txt, 50.0)
    expected = 0.5 * (kl(teacher, student) + kl(_transpose(teacher), _transpose(student)))
    assert float(crd_loss(s_img, s_txt, 20.0, t_img, t_txt, 50.0)) == pytest.approx(expected, rel=1e-5)
    # A student whose matrix equals the teacher's (same embeddings, same scale) scores 0.
    assert float(crd_loss(t_img, t_txt, 50.0, t_img, t_txt, 50.0)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("d_t", [16, 24])
def test_fd_and_mfd_are_mean_squared_errors(d_t: int) -> None:
    f_img, f_txt, g_img, g_txt = (_unit(B, d_t, seed=s) for s in range(4))
    assert float(fd_loss(f_img, f_txt, g_img, g_txt)) == pytest.approx(
        _mse(f_img, g_img) + _mse(f_txt, g_txt), rel=1e-5
    )
    assert float(mfd_loss(f_img, g_img)) == pytest.approx(_mse(f_img, g_img), rel=1e-5)
    with pytest.raises(ValueError, match="project first"):
        fd_loss(f_img[:, :-1], f_txt, g_img, g_txt)


def test_contrastive_grads_are_the_clip_loss_autograd() -> None:
    img = _unit(B, 8, seed=0).requires_grad_(True)
    txt = _unit(B, 8, seed=1).requires_grad_(True)
    clip_loss(img, txt, 30.0).backward()
    d_img, d_txt = contrastive_grads(img.detach(), txt.detach(), 30.0)
    assert torch.allclose(d_img, img.grad, atol=1e-6)
    assert torch.allclose(d_txt, txt.grad, atol=1e-6)


@pytest.mark.parametrize("d_t", [8, 14])
def test_gd_matches_the_loop_reference(d_t: int) -> None:
    f_img, f_txt, g_img, g_txt = (_unit(B, d_t, seed=s) for s in range(4))

    def grads(img: torch.Tensor, txt: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        z = _sim(img, txt, scale)
        rows, cols = [_softmax(r) for r in z], [_softmax(c) for c in _transpose(z)]
        # dL/dZ_ij = ((softmax_row_i(Z)_j - [i=j]) + (softmax_row_j(Z^T)_i - [i=j])) / (2B)
        dz = [[(rows[i][j] + cols[j][i] - 2.0 * (i == j)) / (2 * B) for j in range(B)] for i in range(B)]
        d_img = torch.tensor(
            [[scale * sum(dz[i][j] * float(txt[j, d]) for j in range(B)) for d in range(d_t)] for i in range(B)]
        )
        d_txt = torch.tensor(
            [[scale * sum(dz[i][j] * float(img[i, d]) for i in range(B)) for d in range(d_t)] for j in range(B)]
        )
        return d_img, d_txt

    s_di, s_dt = grads(f_img, f_txt, 20.0)
    t_di, t_dt = grads(g_img, g_txt, 60.0)
    expected = _mse(s_di, t_di) + _mse(s_dt, t_dt)
    assert float(gd_loss(f_img, f_txt, 20.0, g_img, g_txt, 60.0)) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("d_t", [8, 14])
def test_icl_crosses_student_and_teacher(d_t: int) -> None:
    f_img, f_txt, g_img, g_txt = (_unit(B, d_t, seed=s) for s in range(4))
    expected = 0.5 * (_ce_diag(_sim(f_img, g_txt, 14.0)) + _ce_diag(_sim(f_txt, g_img, 14.0)))
    assert float(icl_loss(f_img, f_txt, g_img, g_txt, 14.0)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("d_s", "d_t"), SIZES)
def test_afd_is_clip_on_fused_features(d_s: int, d_t: int) -> None:
    s_img, s_txt, g_img, g_txt = (
        _unit(B, d_s, seed=0),
        _unit(B, d_s, seed=1),
        _unit(B, d_t, seed=2),
        _unit(B, d_t, seed=3),
    )
    torch.manual_seed(0)
    fusion = FeatureFusion(d_s, d_t)
    w_img, w_txt = fusion.image.weight.detach(), fusion.text.weight.detach()  # [D_s, D_s + D_t]

    def fuse(w: torch.Tensor, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in range(B):
            joined = f[i].tolist() + g[i].tolist()
            h = [sum(w[o, c].item() * joined[c] for c in range(len(joined))) for o in range(w.shape[0])]
            norm = math.sqrt(sum(v * v for v in h))
            rows.append([v / norm for v in h])
        return torch.tensor(rows)

    h_img, h_txt = fuse(w_img, s_img, g_img), fuse(w_txt, s_txt, g_txt)
    logits = _sim(h_img, h_txt, 10.0)
    expected = 0.5 * (_ce_diag(logits) + _ce_diag(_transpose(logits)))
    assert float(afd_loss(fusion, s_img, s_txt, g_img, g_txt, 10.0).detach()) == pytest.approx(expected, rel=1e-4)


def test_projections_are_identity_for_equal_sizes_and_learned_otherwise() -> None:
    proj = TeacherProjections(16, [16, 24])
    s_img, s_txt = _unit(B, 16, seed=0), _unit(B, 16, seed=1)
    same_img, same_txt = proj(s_img, s_txt, 0)
    assert torch.allclose(same_img, s_img, atol=1e-7) and torch.allclose(same_txt, s_txt, atol=1e-7)
    wide_img, wide_txt = proj(s_img, s_txt, 1)
    assert wide_img.shape == wide_txt.shape == (B, 24)
    assert torch.allclose(wide_img.norm(dim=1), torch.ones(B), atol=1e-6)
    assert sum(p.numel() for p in proj.parameters()) == 2 * 16 * 24  # image and text maps, teacher 1 only


def _teachers(dims: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    img = torch.cat([_unit(B, d, seed=seed + k) for k, d in enumerate(dims)], dim=1)
    txt = torch.cat([_unit(B, d, seed=seed + 10 + k) for k, d in enumerate(dims)], dim=1)
    return img, txt


def test_combined_module_averages_teachers_and_weights_terms() -> None:
    dims, scales = [16, 24], [100.0, 50.0]
    torch.manual_seed(0)
    weights = {"crd": 1.0, "icl": 1.0, "fd": 2000.0, "gd": 1e6, "afd": 0.5, "mfd": 3.0}
    kd = ClipKDLoss(weights, 16, dims, scales)
    s_img, s_txt, s_masked = _unit(B, 16, seed=0), _unit(B, 16, seed=1), _unit(B, 16, seed=2)
    t_img, t_txt = _teachers(dims, seed=5)
    out = kd(s_img, s_txt, 20.0, t_img, t_txt, s_masked)
    parts = [(t_img[:, :16], t_txt[:, :16]), (t_img[:, 16:], t_txt[:, 16:])]
    per_teacher = []
    for k, (g_img, g_txt) in enumerate(parts):
        f_img, f_txt = kd.projections(s_img, s_txt, k)
        per_teacher.append(
            {
                "crd": crd_loss(s_img, s_txt, 20.0, g_img, g_txt, scales[k]),
                "fd": fd_loss(f_img, f_txt, g_img, g_txt),
                "mfd": mfd_loss(kd.projections.project_image(s_masked, k), g_img),
                "gd": gd_loss(f_img, f_txt, 20.0, g_img, g_txt, scales[k]),
                "icl": icl_loss(f_img, f_txt, g_img, g_txt, 1 / 0.07),
                "afd": afd_loss(kd.fusion[k], s_img, s_txt, g_img, g_txt, 20.0),
            }
        )
    total = 0.0
    for term, weight in weights.items():
        mean = float(sum(p[term] for p in per_teacher).detach()) / 2
        assert float(out[f"loss_{term}"].detach()) == pytest.approx(mean, rel=1e-5), term
        total += weight * mean
    assert float(out["loss_kd"].detach()) == pytest.approx(total, rel=1e-5)
    # Every learned part gets a gradient: projections (teacher 1 only), fusion, ICL's scale.
    out["loss_kd"].backward()
    learned = dict(kd.named_parameters())
    assert {"icl_logit_scale", "fusion.0.image.weight", "projections.image.1.weight"} <= set(learned)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learned.values())


def test_combined_module_rejects_bad_configs() -> None:
    with pytest.raises(ValueError, match="unknown CLIP-KD terms"):
        ClipKDLoss({"kl": 1.0}, 8, [8], [100.0])
    with pytest.raises(ValueError, match="finite and >= 0"):
        ClipKDLoss({"fd": -1.0}, 8, [8], [100.0])
    kd = ClipKDLoss({"mfd": 1.0}, 8, [8], [100.0])
    with pytest.raises(ValueError, match="masked view"):
        kd(_unit(B, 8, seed=0), _unit(B, 8, seed=1), 10.0, _unit(B, 8, seed=2), _unit(B, 8, seed=3))
    with pytest.raises(ValueError, match="do not match the teachers' widths"):
        ClipKDLoss({"fd": 1.0}, 8, [8], [100.0])(
            _unit(B, 8, seed=0), _unit(B, 8, seed=1), 10.0, _unit(B, 9, seed=2), _unit(B, 9, seed=3)
        )
    assert not ClipKDLoss({"fd": 0.0}, 8, [8], [100.0]).active


def test_pixel_masking_hides_the_asked_share_per_image() -> None:
    pixels = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fill = torch.full((1, 3, 1, 1), -5.0)
    masked = mask_pixel_patches(pixels, 0.5, fill, grid=8, generator=torch.Generator().manual_seed(1))
    hidden = (masked == -5.0).all(dim=1)  # [B, H, W]
    assert hidden.float().mean(dim=(1, 2)).tolist() == [0.5, 0.5, 0.5]
    assert not torch.equal(hidden[0], hidden[1])  # each image its own patches
    assert torch.equal(masked[~hidden.unsqueeze(1).expand_as(masked)], pixels[~hidden.unsqueeze(1).expand_as(pixels)])


@pytest.mark.parametrize("variant", ["tiny-vit", "MobileCLIP-nano"])
def test_mfd_gradient_flows_through_the_masked_pass(variant: str) -> None:
    """The public code's MFD overwrote its masked pass; here the masked view reaches the loss."""
    torch.manual_seed(0)
    student = build_student(variant).train()
    d_s = student.info.embed_dim
    pixels = torch.rand(4, 3, student.info.image_size, student.info.image_size)
    g_img = _unit(4, 24, seed=3)
    proj = TeacherProjections(d_s, [24])
    masked = student.encode_image_masked(pixels, 0.5, torch.Generator().manual_seed(0))
    full = student.encode_image(pixels)
    assert not torch.allclose(masked, full, atol=1e-4)  # the mask changed what the tower saw

    def grads(loss: torch.Tensor) -> torch.Tensor:
        params = [p for p in student.clip.visual.parameters() if p.requires_grad]
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params, allow_unused=False)])

    g_mfd = grads(mfd_loss(proj.project_image(masked, 0), g_img))
    g_fd = grads(mfd_loss(proj.project_image(full, 0), g_img))  # FD's image term on the same view
    assert g_mfd.abs().sum() > 0
    assert not torch.allclose(g_mfd, g_fd, atol=1e-6)
