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
from clipforge.progress import bar_progress

T = TypeVar("T")

# Written by the runner into every published stage folder, beside what the stage wrote.
MANIFEST_FILE = "manifest.parquet"
REPORT_FILE = "report.json"


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
        """Wrap a loop that may take more than a few seconds in a progress bar (``clipforge.progress``)."""
        return bar_progress(self.name, self.show_progress)(items, desc, total)


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
    # Markdown tables worth showing a person (per-task metrics, latency), by label.
    tables: dict[str, str] = field(default_factory=dict)


class UndeclaredParamsSection(AttributeError):
    """A stage read a params section its chain entry does not declare."""


class DeclaredParams:
    """The params as one stage sees them: only the sections its chain entry declares.

    The declared sections are DVC's params deps for the stage and what MLflow records for
    its run; reading any other section would make both lie, so it raises instead.
    """

    def __init__(self, params: Params, stage: str, sections: Iterable[str]) -> None:
        self._params = params
        self._stage = stage
        self._sections = frozenset(sections)

    def __getattr__(self, name: str) -> Any:
        # Only called for names not set in __init__: sections and Params' own attributes.
        if name in type(self._params).model_fields and name != "profile" and name not in self._sections:
            raise UndeclaredParamsSection(
                f"stage {self._stage!r} reads params section {name!r}, which its entry in chain/spec.py "
                f"does not declare (declared: {', '.join(sorted(self._sections))})"
            )
        return getattr(self._params, name)
