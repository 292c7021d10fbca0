"""Resumable training checkpoints: atomic writes every N steps, the last k kept, the newest read back.

A stage publishes only when it returns, so a killed ``student_model`` run leaves nothing in the
lake; its progress survives here instead, in a local folder keyed by what the run trains (see
``training.student_model.run_fingerprint``), so a rerun of the same training resumes and a
changed one starts afresh. Files are written to a temporary name and renamed into place
(``os.replace`` is atomic on one filesystem), so a kill mid-write never leaves a truncated
checkpoint that looks complete. Everything inside is a tensor, a number, a string or a
container of those: ``torch.load(weights_only=True)`` reads it without unpickling code.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

_NAME = "step_{:08d}.pt"
_PATTERN = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointStore:
    """``folder/step_NNNNNNNN.pt``: ``save`` keeps the newest ``keep``; ``latest`` loads the newest."""

    def __init__(self, folder: Path, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.folder = Path(folder)
        self.keep = keep

    def steps(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.folder.iterdir() if (m := _PATTERN.match(p.name)))

    def save(self, state: dict[str, Any], step: int) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / _NAME.format(step)
        partial = final.with_name(f".{final.name}.partial")
        torch.save(state, partial)
        os.replace(partial, final)
        for old in self.steps()[: -self.keep]:
            (self.folder / _NAME.format(old)).unlink(missing_ok=True)
        return final

    def latest(self) -> dict[str, Any] | None:
        steps = self.steps()
        if not steps:
            return None
        return torch.load(self.folder / _NAME.format(steps[-1]), map_location="cpu", weights_only=True)

    def clear(self) -> None:
        """Drop the run's checkpoints (its result is published; a rerun starts afresh), and the
        stage's and the checkpoint root's folders when nothing else is left in them."""
        shutil.rmtree(self.folder, ignore_errors=True)
        for parent in (self.folder.parent, self.folder.parent.parent):
            try:
                parent.rmdir()
            except OSError:  # not empty (another run's checkpoints), or already gone
                break
