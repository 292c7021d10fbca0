"""Great Expectations plumbing: a suite's rules become expectations, results become reasons.

GX is driven through its Core 1.x API with one cached ephemeral context (pandas datasource,
one dataframe asset, a whole-dataframe batch definition): building the context costs more
than validating a manifest, and the gate runs for every stage. Each expectation result is
turned into one readable line, so a person sees *why* a gate failed without reading GX JSON.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from functools import cache
from typing import Any

import pandas as pd

from clipforge.gates.result import GateResult
from clipforge.gates.rules import Rule, Suite

# Set before great_expectations is imported anywhere in the process: there is no network.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# GX logs its own import and context set-up at INFO; a stage log should show only problems.
logging.getLogger("great_expectations").setLevel(logging.ERROR)

_EXAMPLES = 5


def _expectation(rule: Rule) -> Any:
    import great_expectations.expectations as gxe

    return getattr(gxe, rule.expectation)(**rule.arguments)


_LOCK = threading.Lock()


@cache
def _batch_definition() -> Any:
    """The cached GX context's whole-dataframe batch definition (the context lives as long)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # This module pins its own logger to INFO on import; quiet it after the import.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.ERROR)

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = context.data_sources.add_pandas("clipforge").add_dataframe_asset("manifest")
    return asset.add_batch_definition_whole_dataframe("whole")


def _rules_for(suite: Suite, columns: list[str]) -> list[Rule]:
    """Expand a suite into the rules to run on a manifest with these columns.

    Column-level rules are only built for columns that exist: a missing column is reported
    once, by its schema rule, instead of once per rule that touches it.
    """
    present = set(columns)
    rules: list[Rule] = [
        Rule("row_count", None, "the manifest has at least 1 row", "ExpectTableRowCountToBeBetween", {"min_value": 1}),
        # One schema expectation for all required columns (GX's cost is per expectation).
        Rule(
            "schema",
            None,
            f"columns {', '.join(suite.required)} exist",
            "ExpectTableColumnsToMatchSet",
            {"column_set": list(suite.required), "exact_match": False},
            columns=suite.required,
        ),
    ]
    for col in suite.required:
        if col in present and col not in suite.nullable:
            rules.append(
                Rule("not_null", col, f"{col} is never null", "ExpectColumnValuesToNotBeNull", {"column": col})
            )
    for cols in suite.unique:
        if not set(cols) <= present:
            continue
        if len(cols) == 1:
            expectation, arguments = "ExpectColumnValuesToBeUnique", {"column": cols[0]}
        else:
            expectation, arguments = "ExpectCompoundColumnsToBeUnique", {"column_list": list(cols)}
        rules.append(
            Rule("unique", ", ".join(cols), f"{' + '.join(cols)} is unique", expectation, arguments, columns=cols)
        )
    rules.extend(r for r in suite.rules if r.column in present)
    return rules


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()  # numpy scalar -> python
        except (ValueError, AttributeError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _examples(result: dict[str, Any]) -> list[Any]:
    seen: list[Any] = []
    for v in result.get("partial_unexpected_list") or []:
        v = _json_safe(v)
        if v not in seen:
            seen.append(v)
        if len(seen) == _EXAMPLES:
            break
    return seen


def _describe(stage: str, rule: Rule, success: bool, result: dict[str, Any], columns: list[str]) -> tuple[Any, str]:
    """(observed, reason) for one expectation result."""
    where = f"{stage}: column {rule.column!r}" if rule.column else stage
    if rule.kind == "row_count":
        n = result.get("observed_value")
        return n, f"{stage}: manifest has {n} rows" + ("" if success else " (expected at least 1)")
    if rule.kind == "schema":
        missing = [c for c in rule.columns if c not in columns]
        observed = {"missing": missing, "columns": columns}
        if success and not missing:
            return observed, f"{stage}: all {len(rule.columns)} required columns present"
        shown = ", ".join(columns) if columns else "none"
        names = ", ".join(map(repr, missing))
        noun = "column" if len(missing) == 1 else "columns"
        verb = "is" if len(missing) == 1 else "are"
        return observed, f"{stage}: required {noun} {names} {verb} missing (docs/stages.md; present: {shown})"
    if rule.kind == "single_value":
        n = result.get("observed_value")
        return n, f"{where}: {n} distinct values" + ("" if success else " (expected the same value on every row)")

    # Column-map expectations: counts over non-null values, plus a few offending examples.
    total = result.get("element_count", 0)
    bad = result.get("unexpected_count", 0) or 0
    pct = result.get("unexpected_percent") or 0.0
    examples = _examples(result)
    observed = {"unexpected_count": bad, "unexpected_percent": round(float(pct), 3), "examples": examples}
    if success:
        return observed, f"{where}: {rule.statement} (ok)"
    eg = f" (e.g. {', '.join(map(repr, examples))})" if examples else ""
    if rule.kind == "lengths":
        if rule.mostly < 1:
            return observed, (f"{where}: {pct:.1f}% of captions are empty (expected at most {1 - rule.mostly:.0%})")
        return observed, f"{where}: {bad} of {total} captions ({pct:.1f}%) are empty (expected none)"
    if rule.kind == "not_null":
        return observed, f"{where}: {bad} of {total} values ({pct:.1f}%) are null or NaN"
    if rule.kind == "unique":
        label = f"{stage}: columns {', '.join(map(repr, rule.columns))}" if len(rule.columns) > 1 else where
        return observed, f"{label}: {bad} of {total} rows ({pct:.1f}%) repeat a value held by another row{eg}"
    return observed, f"{where}: {bad} of {total} values ({pct:.1f}%) break the rule '{rule.statement}'{eg}"


def _exception_message(info: Any) -> str | None:
    """The first error GX caught while computing an expectation's metrics, if any.

    GX reports it either flat (``{"raised_exception": True, ...}``) or per metric
    (``{metric_id: {"raised_exception": True, ...}}``).
    """
    if not isinstance(info, dict):
        return None
    entries = [info, *(v for v in info.values() if isinstance(v, dict))]
    for entry in entries:
        if entry.get("raised_exception"):
            text = str(entry.get("exception_message") or "unknown error").strip()
            return (text.splitlines() or ["unknown error"])[0][:300]
    return None


def run_gate(stage: str, suite: Suite, manifest: pd.DataFrame) -> GateResult:
    """Validate ``manifest`` against ``stage``'s ``suite``; every expectation becomes one check."""
    import great_expectations as gx

    batch_definition = _batch_definition()  # also makes the context current for the suite
    columns = [str(c) for c in manifest.columns]
    rules = _rules_for(suite, columns)
    gx_suite = gx.ExpectationSuite(name=f"clipforge.{stage}")
    for index, rule in enumerate(rules):
        expectation = _expectation(rule)
        # GX groups results by metric, not in suite order: the index maps them back.
        expectation.meta = {"clipforge_rule": index}
        gx_suite.add_expectation(expectation)

    with _LOCK:
        batch = batch_definition.get_batch(batch_parameters={"dataframe": manifest})
        validation = batch.validate(gx_suite, result_format="SUMMARY")

    checks: list[dict[str, Any] | None] = [None] * len(rules)
    for res in validation.results:
        index = int(res.expectation_config.meta["clipforge_rule"])
        rule = rules[index]
        message = _exception_message(res.exception_info)
        if message is not None:
            observed: Any = {"error": message}
            reason = f"{stage}: column {rule.column!r}: could not check '{rule.statement}' ({message})"
            success = False
        else:
            success = bool(res.success)
            observed, reason = _describe(stage, rule, success, dict(res.result or {}), columns)
        checks[index] = {
            "expectation": res.expectation_config.type,
            "column": rule.column,
            "success": success,
            "observed": _json_safe(observed),
            "reason": reason,
        }
    missing = [rules[i].statement for i, c in enumerate(checks) if c is None]
    if missing:
        # GX returned fewer results than expectations: never let a check vanish silently.
        raise RuntimeError(f"{stage}: quality gate got no result for: {'; '.join(missing)}")
    done = [c for c in checks if c is not None]
    return GateResult(passed=all(c["success"] for c in done), checks=done)
