"""Loss curves as PNG previews (the Dagster UI and MLflow show them)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# What a training stage writes beside its model: the per-step history and its loss-curve preview.
HISTORY_FILE = "history.parquet"
LOSS_CURVE = "previews/loss_curve.png"


def plot_history(histories: dict[str, pd.DataFrame], path: Path, title: str) -> Path:
    """Loss curves (total loss, and the CoCa's parts when present) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for label, hist in histories.items():
        ax.plot(hist["step"], hist["loss"], label=f"{label} loss")
        for part in ("contrastive_loss", "caption_loss"):
            if part in hist:
                ax.plot(hist["step"], hist[part], label=f"{label} {part.replace('_', ' ')}", alpha=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_loss_curve(history: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (ax_loss, ax_scale) = plt.subplots(1, 2, figsize=(10, 3.5))
    # The total, MobileCLIP's two parts, then the weighted CLIP-KD sum when KD was on.
    for column in [c for c in ("loss", "loss_clip", "loss_distill", "loss_kd") if c in history]:
        ax_loss.plot(history["step"], history[column], label=column, linewidth=1)
    ax_loss.set_xlabel("step")
    ax_loss.set_title("student loss")
    ax_loss.legend()
    ax_scale.plot(history["step"], history["logit_scale"], color="tab:purple", label="logit scale")
    ax_scale.set_xlabel("step")
    ax_scale.set_ylabel("logit scale (solid)")
    ax_scale.set_title("logit scale / learning rate")
    ax_lr = ax_scale.twinx()
    ax_lr.plot(history["step"], history["lr"], color="tab:gray", linestyle="--", label="lr")
    ax_lr.set_ylabel("learning rate (dashed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
