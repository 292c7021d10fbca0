"""The evaluation report: per-task tables, the aggregates, and the reference comparison.

Scores arrive as ``{"<task>/<metric>": value}`` per model; ``kinds`` maps each task to
``classification`` or ``retrieval``.
"""

from __future__ import annotations

from pathlib import Path

from training.eval.references import CHANCE

CLASSIFICATION_METRICS = ("top1", "top5", "mean_per_class_recall")
RETRIEVAL_METRICS = ("image_r1", "image_r5", "image_r10", "text_r1", "text_r5", "text_r10")
AGGREGATES = ("zeroshot_top1_mean", "retrieval_mean_r1")
# What :func:`headline` reports per task kind.
HEADLINE_LABELS = {"classification": "top-1", "retrieval": "mean R@1"}


def aggregate(metrics: dict[str, float], kinds: dict[str, str]) -> dict[str, float]:
    """``zeroshot_top1_mean`` over classification tasks, ``retrieval_mean_r1`` (mean of image and
    text R@1, averaged over retrieval tasks); each present only when such tasks exist."""
    out: dict[str, float] = {}
    cls = [headline(metrics, t, k) for t, k in kinds.items() if k == "classification"]
    ret = [headline(metrics, t, k) for t, k in kinds.items() if k == "retrieval"]
    if cls:
        out["zeroshot_top1_mean"] = sum(cls) / len(cls)
    if ret:
        out["retrieval_mean_r1"] = sum(ret) / len(ret)
    return out


def metrics_table(metrics: dict[str, float], kinds: dict[str, str]) -> str:
    """Markdown: one table per task kind, then the aggregates."""
    lines: list[str] = []
    cls_tasks = [t for t, k in kinds.items() if k == "classification"]
    ret_tasks = [t for t, k in kinds.items() if k == "retrieval"]
    if cls_tasks:
        lines += ["| task | top-1 | top-5 | mean per-class recall |", "|---|---|---|---|"]
        lines += [
            f"| {t} | " + " | ".join(f"{metrics[f'{t}/{m}']:.4f}" for m in CLASSIFICATION_METRICS) + " |"
            for t in cls_tasks
        ]
        lines.append("")
    if ret_tasks:
        lines += [
            "| task | text→image R@1 | R@5 | R@10 | image→text R@1 | R@5 | R@10 |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {t} | " + " | ".join(f"{metrics[f'{t}/{m}']:.4f}" for m in RETRIEVAL_METRICS) + " |" for t in ret_tasks
        ]
        lines.append("")
    for name in AGGREGATES:
        if name in metrics:
            lines.append(f"**{name}**: {metrics[name]:.4f}  ")
    return "\n".join(lines).rstrip()


def headline(scores: dict[str, float], task: str, kind: str) -> float:
    """One number per task: top-1 for classification, mean of image and text R@1 for retrieval."""
    if kind == "classification":
        return scores[f"{task}/top1"]
    return (scores[f"{task}/image_r1"] + scores[f"{task}/text_r1"]) / 2


def references_table(per_model: dict[str, dict[str, float]], kinds: dict[str, str]) -> str:
    """Markdown: one row per model (chance, teachers, ensemble, student), one column per task's
    headline score, then the aggregates present."""
    aggregates = [a for a in AGGREGATES if any(a in scores for scores in per_model.values())]
    header = [*(f"{t} ({HEADLINE_LABELS[k]})" for t, k in kinds.items()), *aggregates]
    lines = ["| model | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for name, scores in per_model.items():
        cells = [f"{headline(scores, t, k):.4f}" for t, k in kinds.items()]
        cells += [f"{scores[a]:.4f}" for a in aggregates]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_chart(per_model: dict[str, dict[str, float]], kinds: dict[str, str], path: Path) -> None:
    """PNG of grouped bars: each task's headline score per model, chance as a dashed mark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(kinds)
    models = [m for m in per_model if m != CHANCE]
    x = np.arange(len(tasks))
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(tasks) + 2), 4), dpi=100)
    for i, name in enumerate(models):
        values = [headline(per_model[name], t, kinds[t]) for t in tasks]
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, label=name)
    if CHANCE in per_model:
        for xi, t in zip(x, tasks, strict=True):
            level = headline(per_model[CHANCE], t, kinds[t])
            ax.hlines(level, xi - 0.45, xi + 0.45, colors="black", linestyles="dashed", linewidth=1)
        ax.plot([], [], "k--", linewidth=1, label="chance")
    ax.set_xticks(x, [f"{t}\n({HEADLINE_LABELS[kinds[t]]})" for t in tasks])
    ax.set_ylim(0, 1)
    ax.set_ylabel("score on the held-out benchmark")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
