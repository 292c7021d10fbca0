"""The outcome of a stage's quality suite over its manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GateResult:
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
