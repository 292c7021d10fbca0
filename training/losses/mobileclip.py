"""The MobileCLIP reinforced-training loss (docs/method.md §2.7).

Every function takes L2-normalised embeddings. Student logits are ``s * f_img @ f_txt.T``
with the student's learnable scale ``s``; the distillation target is, per teacher ``k``,
``softmax(tau_k * psi_img_k @ psi_txt_k.T)`` with that teacher's own FIXED scale ``tau_k``,
averaged over teachers after the softmax. Losses are computed in float32 even under
autocast: a bf16 softmax over a batch-wide similarity matrix loses too much precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def _check_pair(img: torch.Tensor, txt: torch.Tensor, what: str) -> None:
    if img.ndim != 2 or txt.ndim != 2 or img.shape != txt.shape:
        raise ValueError(
            f"{what}: expected two [B, D] tensors of the same shape, got {tuple(img.shape)} and {tuple(txt.shape)}"
        )
    if img.shape[0] < 1:
        raise ValueError(f"{what}: empty batch")


def clip_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE: img [B, D], txt [B, D], pairs on the diagonal -> scalar."""
    _check_pair(img, txt, "clip_loss")
    logits = scale * img.float() @ txt.float().T  # [B, B], row i: image i against every text
    labels = torch.arange(img.shape[0], device=img.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def distill_targets(
    t_img: torch.Tensor,
    t_txt: torch.Tensor,
    teacher_dims: Sequence[int],
    teacher_scales: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-ensemble soft targets from stored embeddings.

    t_img, t_txt: [B, sum D_k], the K teachers' normalised embeddings concatenated in
    ``teacher_dims`` order. Returns (p_i2t [B, B], p_t2i [B, B]); each row sums to 1.
    Row i of p_i2t is the distribution over texts for image i; row j of p_t2i over images
    for text j. Averaging happens after each teacher's softmax (not over logits), and each
    teacher uses its own scale: a shared scale is the pitfall docs/method.md §2.7 warns about.
    """
    _check_pair(t_img, t_txt, "distill_targets")
    dims = [int(d) for d in teacher_dims]
    if len(dims) != len(teacher_scales) or not dims:
        raise ValueError(f"need one scale per teacher: {len(dims)} dims, {len(teacher_scales)} scales")
    if any(d <= 0 for d in dims) or sum(dims) != t_img.shape[1]:
        raise ValueError(f"teacher dims {dims} do not add up to the embedding width {t_img.shape[1]}")
    with torch.no_grad():
        p_i2t = torch.zeros(t_img.shape[0], t_img.shape[0], device=t_img.device)
        p_t2i = torch.zeros_like(p_i2t)
        for ti, tt, tau in zip(
            t_img.float().split(dims, dim=1), t_txt.float().split(dims, dim=1), teacher_scales, strict=True
        ):
            # Re-normalise each teacher part: idempotent on normalised input, and it undoes
            # the small norm drift of embeddings stored in bfloat16 (pth.gz shards).
            logits = float(tau) * F.normalize(ti, dim=1) @ F.normalize(tt, dim=1).T  # [B, B]
            p_i2t += logits.softmax(dim=1)
            p_t2i += logits.T.softmax(dim=1)
        return p_i2t / len(dims), p_t2i / len(dims)


def _soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_j target_ij log softmax(logits)_ij."""
    return -(target * logits.log_softmax(dim=1)).sum(dim=1).mean()


def distill_loss(
    s_img: torch.Tensor,
    s_txt: torch.Tensor,
    s_scale: torch.Tensor | float,
    p_i2t: torch.Tensor,
    p_t2i: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of the student's softmax against the teacher targets, both directions.

    Equals KL(target || student) plus the target's entropy, a constant for the student.
    """
    _check_pair(s_img, s_txt, "distill_loss")
    b = s_img.shape[0]
    if p_i2t.shape != (b, b) or p_t2i.shape != (b, b):
        raise ValueError(f"distill_loss: targets must be [{b}, {b}], got {tuple(p_i2t.shape)}, {tuple(p_t2i.shape)}")
    logits = s_scale * s_img.float() @ s_txt.float().T  # [B, B]
    return 0.5 * (_soft_cross_entropy(logits, p_i2t.float()) + _soft_cross_entropy(logits.T, p_t2i.float()))


def mobileclip_loss(
    s_img: torch.Tensor,
    s_txt_real: torch.Tensor,
    s_txt_syn: torch.Tensor | None,
    s_scale: torch.Tensor | float,
    t_img: torch.Tensor,
    t_txt_real: torch.Tensor,
    t_txt_syn: torch.Tensor | None,
    teacher_dims: Sequence[int],
    teacher_scales: Sequence[float],
    lam: float,
) -> dict[str, torch.Tensor]:
    """Step loss ``L(B_real) + L(B_syn)`` with ``L = (1 - lam) L_CLIP + lam L_distill``.

    s_img [B, D] student image embeddings (one stored augmentation per image); s_txt_real /
    s_txt_syn [B, D] student embeddings of the real / one synthetic caption; t_* [B, sum D_k]
    the stored teacher embeddings of the same augmentation and captions. Pass both *_syn as
    None to train on real captions only. Returns ``loss`` (to backpropagate) and its parts,
    not detached: ``loss_clip`` and ``loss_distill`` (unweighted, summed over the caption sets, so
    ``loss = (1 - lam) loss_clip + lam loss_distill``), and ``loss_real`` / ``loss_syn``.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if (s_txt_syn is None) != (t_txt_syn is None):
        raise ValueError("s_txt_syn and t_txt_syn must both be given or both be None")
    sets = [("real", s_txt_real, t_txt_real)]
    if s_txt_syn is not None:
        sets.append(("syn", s_txt_syn, t_txt_syn))
    out: dict[str, torch.Tensor] = {}
    total_clip = total_distill = None
    for name, s_txt, t_txt in sets:
        l_clip = clip_loss(s_img, s_txt, s_scale)
        p_i2t, p_t2i = distill_targets(t_img, t_txt, teacher_dims, teacher_scales)
        l_distill = distill_loss(s_img, s_txt, s_scale, p_i2t, p_t2i)
        out[f"loss_{name}"] = (1.0 - lam) * l_clip + lam * l_distill
        total_clip = l_clip if total_clip is None else total_clip + l_clip
        total_distill = l_distill if total_distill is None else total_distill + l_distill
    out["loss_clip"] = total_clip
    out["loss_distill"] = total_distill
    out["loss"] = sum(out[f"loss_{name}"] for name, _, _ in sets)
    return out
