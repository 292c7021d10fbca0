"""Quality gates: each stage declares a :class:`Suite` of rules over its manifest (beside its
``run``), and :func:`run_gate` checks a manifest against it with Great Expectations.

``rules`` holds what a rule means (plain data); ``expectations`` holds the GX plumbing that
turns rules into expectations and results into one readable line per check.
"""

from clipforge.gates.expectations import run_gate
from clipforge.gates.result import GateResult
from clipforge.gates.rules import Rule, Suite

__all__ = ["GateResult", "Rule", "Suite", "run_gate"]
