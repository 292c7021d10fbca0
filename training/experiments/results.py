"""The experiment's result: per-arm figures over seeds, the comparison with the baseline arm,
the markdown report and the learning-curve plot.

The baseline is the first arm in ``experiment.arms`` (plain CLIP in params.yaml). Spreads are
over seeds: mean, sample standard deviation, min and max of the final evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from training.eval.report import AGGREGATES


def metric_columns(evals: pd.DataFrame) -> list[str]:
    """Task headline columns, then the aggregates: every scored column of an evals table."""
    fixed = {"arm", "seed", "step"}
    tasks = [c for c in evals.columns if c not in fixed and c not in AGGREGATES]
    return [*tasks, *(a for a in AGGREGATES if a in evals.columns)]


def mean_curve(evals: pd.DataFrame, arm: str, metric: str) -> pd.Series:
    """The arm's ``metric`` at each evaluated step, averaged over seeds (index: step)."""
    return evals[evals["arm"] == arm].groupby("step")[metric].mean()


def steps_to_reach(curve: pd.Series, target: float) -> int | None:
    """The first evaluated step whose value is at least ``target`` (None if none is)."""
    reached = curve[curve >= target - 1e-12]
    return int(reached.index[0]) if len(reached) else None


def summarize(evals: pd.DataFrame, seconds: pd.DataFrame, arms: list[str]) -> dict[str, Any]:
    """Per arm: each metric's final mean/std/min/max over seeds, seconds per step, and against
    the baseline (``arms[0]``): zero-shot gain, whether the seed ranges overlap, and the step at
    which the arm's mean curve first reaches the baseline's final zero-shot mean."""
    final_step = int(evals["step"].max())
    final = evals[evals["step"] == final_step]
    metrics = metric_columns(evals)
    baseline = arms[0]
    base = final[final["arm"] == baseline]["zeroshot_top1_mean"]
    out: dict[str, Any] = {"final_step": final_step, "baseline": baseline, "arms": {}}
    for arm in arms:
        rows = final[final["arm"] == arm]
        figures: dict[str, Any] = {
            m: {
                "mean": float(rows[m].mean()),
                "std": float(rows[m].std(ddof=1)) if len(rows) > 1 else 0.0,
                "min": float(rows[m].min()),
                "max": float(rows[m].max()),
            }
            for m in metrics
        }
        zs = rows["zeroshot_top1_mean"]
        figures["seeds"] = len(rows)
        figures["seconds_per_step"] = float(seconds[seconds["arm"] == arm]["seconds_per_step"].mean())
        figures["vs_baseline"] = {
            "zeroshot_gain": float(zs.mean() - base.mean()),
            "seed_ranges_overlap": bool(zs.min() <= base.max() and base.min() <= zs.max()),
            "steps_to_baseline_final": steps_to_reach(mean_curve(evals, arm, "zeroshot_top1_mean"), float(base.mean())),
        }
        out["arms"][arm] = figures
    return out


def _cell(figure: dict[str, float]) -> str:
    return f"{figure['mean']:.3f} ± {figure['std']:.3f}"


def markdown_table(summary: dict[str, Any], descriptions: dict[str, str]) -> str:
    """Final scores (mean ± std over seeds), seconds per step, and the comparison with the baseline."""
    arms = summary["arms"]
    metrics = [k for k in next(iter(arms.values())) if k not in ("seeds", "seconds_per_step", "vs_baseline")]
    header = [
        "arm",
        *metrics,
        "s/step",
        f"Δ zero-shot vs {summary['baseline']}",
        "seed ranges overlap",
        "steps to baseline's final",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for arm, figures in arms.items():
        versus = figures["vs_baseline"]
        reached = versus["steps_to_baseline_final"]
        cells = [
            f"**{arm}**: {descriptions.get(arm, '')}",
            *(_cell(figures[m]) for m in metrics),
            f"{figures['seconds_per_step']:.3f}",
            f"{versus['zeroshot_gain']:+.3f}",
            "yes" if versus["seed_ranges_overlap"] else "no",
            "never" if reached is None else str(reached),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(evals: pd.DataFrame, arms: list[str], path: Path) -> None:
    """Zero-shot mean and retrieval mean R@1 against steps: per arm the mean over seeds, the
    band from the worst to the best seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for ax, metric, title in zip(
        axes, AGGREGATES, ("zero-shot top-1, mean of tasks", "retrieval, mean R@1"), strict=True
    ):
        for arm in arms:
            rows = evals[evals["arm"] == arm].groupby("step")[metric]
            mean = rows.mean()
            (line,) = ax.plot(mean.index, mean.values, marker="o", markersize=3, label=arm)
            ax.fill_between(mean.index, rows.min().values, rows.max().values, color=line.get_color(), alpha=0.15)
        ax.set_xlabel("training step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
