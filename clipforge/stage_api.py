"""The contract between a stage implementation and the runner that drives it.

A stage is a plain function ``run(ctx: StageContext) -> StageOutcome``. It reads its
upstream stages' published folders from ``ctx.inputs``, writes everything it produces under
``ctx.out_dir`` (a private staging folder), and returns a manifest (one row per sample or
per artifact) plus a small summary. The runner (``chain.runner``) owns the rest:
MLflow run, manifest and report files, atomic publishing to the lake, and the quality gate.
Stages never import Dagster or DVC.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pandas as pd

from clipforge.config import Params

T = TypeVar("T")


class Tracker(Protocol):
    """What a stage may record about its run (an MLflow run in practice)."""

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...


class NullTracker:
    """Tracker for unit tests that call a stage without MLflow."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.metrics: list[tuple[dict[str, float], int | None]] = []
        self.artifacts: list[tuple[Path, str | None]] = []
        self.tags: dict[str, str] = {}

    def log_params(self, params: dict[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((dict(metrics), step))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)


@dataclass
class StageContext:
    name: str
    params: Params
    # Upstream stage name -> local folder of its published output (read-only).
    inputs: dict[str, Path]
    # Private staging folder; published atomically after the stage returns.
    out_dir: Path
    tracker: Tracker = field(default_factory=NullTracker)
    show_progress: bool = True
    # Identifier of the MLflow run recording this execution (None without MLflow).
    run_id: str | None = None

    def progress(self, items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        """Wrap a loop that may take more than a few seconds in a progress bar."""
        from tqdm.auto import tqdm

        return iter(tqdm(items, desc=f"{self.name}: {desc}", total=total, disable=not self.show_progress))


@dataclass
class StageOutcome:
    # One row per sample (data stages) or per artifact (model stages); written as
    # manifest.parquet and checked by the stage's quality suite.
    manifest: pd.DataFrame
    # Small JSON-able facts for the report and the Dagster UI: counts, skips and reasons.
    summary: dict[str, Any] = field(default_factory=dict)
    # Scalar results worth comparing across runs (logged to MLflow).
    metrics: dict[str, float] = field(default_factory=dict)
    # Files under out_dir worth showing a person (sample grid, loss curve), by label.
    previews: dict[str, str] = field(default_factory=dict)


@dataclass
class GateResult:
    """Outcome of a stage's quality suite over its manifest."""

    passed: bool
    # One entry per expectation: {"expectation": str, "column": str | None,
    # "success": bool, "observed": JSON-able, "reason": str}
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [c for c in self.checks if not c["success"]]

    def reason(self) -> str:
        """One readable line per failed expectation ("" when the gate passed)."""
        return "\n".join(c["reason"] for c in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": self.checks}
