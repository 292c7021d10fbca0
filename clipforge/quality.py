"""Quality gates: one Great Expectations suite per stage, run over the stage's manifest.

The suites encode the contracts in ``docs/stages.md``: required columns (schema), unique and
non-null keys, no nulls in required columns, value ranges, and at least one row. The runner
(``chain.runner.run_stage``) calls :func:`run_gate` after every stage; Dagster turns the
result into a blocking asset check and the CLI stops the chain on failure.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pandas as pd

from clipforge.config import Params
from clipforge.stage_api import GateResult

# Set before great_expectations is imported anywhere in the process: there is no network.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
# GX logs its own import and context set-up at INFO; a stage log should show only problems.
logging.getLogger("great_expectations").setLevel(logging.ERROR)

# A pool where fewer than this fraction of samples carry a caption is broken upstream (a bad
# parquet join, a wrong column): filtering would silently drop everything. DataComp pools
# have some empty alt-texts, so the gate allows them up to this point.
POOL_MIN_CAPTIONED_FRACTION = 0.5
# Upper bound that makes "between" reject +-inf while accepting any real loss or norm.
_FINITE_BOUND = 1e30
_EXAMPLES = 5


@dataclass(frozen=True)
class Rule:
    """One check of a suite: a GX expectation factory plus what it means in words."""

    kind: str  # row_count | schema | not_null | unique | values | lengths | single_value
    column: str | None
    # Human statement of the rule, e.g. "width > 0"; used in reasons.
    statement: str
    make: Callable[[], Any] = field(repr=False)
    columns: tuple[str, ...] = ()  # for the schema rule and compound uniqueness
    mostly: float = 1.0


@dataclass(frozen=True)
class Suite:
    required: tuple[str, ...]
    # Required columns whose nulls mean "unknown" (e.g. similarity scores absent upstream).
    nullable: frozenset[str] = frozenset()
    # Column tuples whose (combined) values must be unique.
    unique: tuple[tuple[str, ...], ...] = ()
    rules: tuple[Rule, ...] = ()


# -- rule constructors -----------------------------------------------------------------------


def _gxe() -> Any:
    import great_expectations.expectations as gxe

    return gxe


def between(
    column: str,
    min_value: float | None = None,
    max_value: float | None = None,
    *,
    strict_min: bool = False,
    statement: str | None = None,
) -> Rule:
    if statement is None:
        if min_value is not None and min_value == max_value:
            statement = f"{column} == {min_value:g}"
        else:
            parts = []
            if min_value is not None:
                parts.append(f"{column} {'>' if strict_min else '>='} {min_value:g}")
            if max_value is not None:
                parts.append(f"{column} <= {max_value:g}")
            statement = " and ".join(parts)
    return Rule(
        "values",
        column,
        statement,
        lambda: _gxe().ExpectColumnValuesToBeBetween(
            column=column, min_value=min_value, max_value=max_value, strict_min=strict_min
        ),
    )


def positive(column: str) -> Rule:
    return between(column, 0, None, strict_min=True)


def finite(column: str) -> Rule:
    return between(column, -_FINITE_BOUND, _FINITE_BOUND, statement=f"{column} is finite")


def in_set(column: str, values: Sequence[Any], statement: str | None = None) -> Rule:
    shown = ", ".join(repr(v) for v in values)
    return Rule(
        "values",
        column,
        statement or f"{column} in {{{shown}}}",
        lambda: _gxe().ExpectColumnValuesToBeInSet(column=column, value_set=list(values)),
    )


def all_true(column: str) -> Rule:
    return in_set(column, [True], statement=f"{column} is True on every row")


def regex(column: str, pattern: str, statement: str) -> Rule:
    return Rule(
        "values", column, statement, lambda: _gxe().ExpectColumnValuesToMatchRegex(column=column, regex=pattern)
    )


def non_empty_text(column: str, mostly: float = 1.0) -> Rule:
    return Rule(
        "lengths",
        column,
        f"{column} is non-empty" + (f" for at least {mostly:.0%} of rows" if mostly < 1 else ""),
        lambda: _gxe().ExpectColumnValueLengthsToBeBetween(column=column, min_value=1, mostly=mostly),
        mostly=mostly,
    )


def single_value(column: str) -> Rule:
    return Rule(
        "single_value",
        column,
        f"{column} is the same on every row",
        lambda: _gxe().ExpectColumnUniqueValueCountToBeBetween(column=column, min_value=0, max_value=1),
    )


SHA256 = r"^[0-9a-f]{64}$"

# -- the suites (docs/stages.md) -------------------------------------------------------------

# The manifest columns the stages write, in order; datacomp_ingest and reinforce build their
# manifests from these so the contract has one owner.
POOL_COLUMNS: tuple[str, ...] = (
    "uid",
    "key",
    "shard",
    "url",
    "text",
    "width",
    "height",
    "original_width",
    "original_height",
    "sha256",
    "clip_b32_similarity_score",
    "clip_l14_similarity_score",
)
REINFORCED_COLUMNS: tuple[str, ...] = (
    "uid",
    "key",
    "shard",
    "num_augs",
    "num_syn",
    "emb_dim",
    "embeddings_finite",
    "image_emb_norm",
    "text_emb_norm",
)
_POOL_SCORES = frozenset({"clip_b32_similarity_score", "clip_l14_similarity_score"})


def _pool_rules() -> tuple[Rule, ...]:
    return (
        *(positive(c) for c in ("width", "height", "original_width", "original_height")),
        *(between(c, -1, 1) for c in sorted(_POOL_SCORES)),
        regex("sha256", SHA256, "sha256 is 64 lowercase hex chars"),
    )


def _model_suite() -> Suite:
    return Suite(
        required=("name", "model_name", "kind", "num_params", "embed_dim", "image_size"),
        unique=(("name",),),
        rules=(
            in_set("kind", ["clip", "coca"]),
            positive("num_params"),
            positive("embed_dim"),
            positive("image_size"),
        ),
    )


def suite_for(stage: str, params: Params) -> Suite:
    """The suite of one stage, with its thresholds taken from ``params``."""
    s = params.synthetic_captions.num_captions
    a = params.reinforced_dataset.num_augmentations
    builders: dict[str, Callable[[], Suite]] = {
        "embedded_corpus": lambda: Suite(
            required=("split", "key", "caption", "width", "height"),
            unique=(("split", "key"),),
            rules=(
                regex("split", r"^(?:pool|teacher|benchmark/.+)$", "split is pool, teacher or benchmark/<task>"),
                positive("width"),
                positive("height"),
            ),
        ),
        "datacomp_pool": lambda: Suite(
            required=POOL_COLUMNS,
            nullable=_POOL_SCORES,
            unique=(("uid",),),
            rules=(*_pool_rules(), non_empty_text("text", mostly=POOL_MIN_CAPTIONED_FRACTION)),
        ),
        "teacher_models": _model_suite,
        "captioner_model": _model_suite,
        "filtered_pool": lambda: Suite(
            required=(*POOL_COLUMNS, "clip_score"),
            nullable=_POOL_SCORES,
            unique=(("uid",),),
            rules=(*_pool_rules(), between("clip_score", -1, 1), non_empty_text("text")),
        ),
        "synthetic_captions": lambda: Suite(
            required=("uid", "num_captions", "min_caption_chars", "mean_caption_words"),
            unique=(("uid",),),
            rules=(
                between("num_captions", s, s, statement=f"num_captions == {s} (synthetic_captions.num_captions)"),
                between("min_caption_chars", 0),
                between("mean_caption_words", 0, _FINITE_BOUND),
            ),
        ),
        "reinforced_dataset": lambda: Suite(
            required=REINFORCED_COLUMNS,
            unique=(("uid",),),
            rules=(
                between("num_augs", a, a, statement=f"num_augs == {a} (reinforced_dataset.num_augmentations)"),
                between("num_syn", s, s, statement=f"num_syn == {s} (synthetic_captions.num_captions)"),
                positive("emb_dim"),
                all_true("embeddings_finite"),
                between(
                    "image_emb_norm", 0, _FINITE_BOUND, strict_min=True, statement="image_emb_norm is finite and > 0"
                ),
                between(
                    "text_emb_norm", 0, _FINITE_BOUND, strict_min=True, statement="text_emb_norm is finite and > 0"
                ),
            ),
        ),
        "student_model": lambda: Suite(
            required=("artifact", "bytes", "sha256", "final_loss"),
            unique=(("artifact",),),
            rules=(
                positive("bytes"),
                regex("sha256", SHA256, "sha256 is 64 lowercase hex chars"),
                finite("final_loss"),
                single_value("final_loss"),
            ),
        ),
        "reparameterized_model": lambda: Suite(
            required=("tower", "folded_modules", "max_abs_diff", "centred_cosine_min"),
            unique=(("tower",),),
            rules=(
                in_set("tower", ["image", "text"]),
                between("folded_modules", 0),
                between(
                    "max_abs_diff",
                    0,
                    params.reparameterized_model.atol,
                    statement=f"0 <= max_abs_diff <= {params.reparameterized_model.atol:g} (reparameterized_model.atol)",
                ),
                between(
                    "centred_cosine_min",
                    params.reparameterized_model.min_centred_cosine,
                    None,
                    statement=(
                        f"centred_cosine_min >= {params.reparameterized_model.min_centred_cosine:g}"
                        " (reparameterized_model.min_centred_cosine)"
                    ),
                ),
            ),
        ),
        "coreml_package": lambda: Suite(
            required=("file", "format", "tower", "bytes", "verified", "cosine_min", "centred_cosine_min"),
            # NaN for mlpackage rows: Core ML cannot run on Linux, so there is no cosine.
            nullable=frozenset({"cosine_min", "centred_cosine_min"}),
            unique=(("file",),),
            rules=(
                in_set("format", ["mlpackage", "onnx"]),
                in_set("tower", ["image", "text"]),
                positive("bytes"),
                all_true("verified"),
                between(
                    "cosine_min",
                    params.coreml_package.onnx_min_cosine,
                    None,
                    statement=f"cosine_min >= {params.coreml_package.onnx_min_cosine:g} (coreml_package.onnx_min_cosine)",
                ),
                between(
                    "centred_cosine_min",
                    params.coreml_package.onnx_min_cosine,
                    None,
                    statement=(
                        f"centred_cosine_min >= {params.coreml_package.onnx_min_cosine:g}"
                        " (coreml_package.onnx_min_cosine)"
                    ),
                ),
            ),
        ),
        "evaluation": lambda: Suite(
            required=("task", "kind", "metric", "value"),
            unique=(("task", "metric"),),
            rules=(in_set("kind", ["classification", "retrieval"]), between("value", 0, 1)),
        ),
    }
    if stage not in builders:
        raise ValueError(f"no quality suite for stage {stage!r}; known: {', '.join(builders)}")
    return builders[stage]()


# -- GX plumbing -----------------------------------------------------------------------------

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
    gxe = _gxe()
    present = set(columns)
    rules: list[Rule] = [
        Rule(
            "row_count",
            None,
            "the manifest has at least 1 row",
            lambda: gxe.ExpectTableRowCountToBeBetween(min_value=1),
        )
    ]
    # One schema expectation for all required columns (GX's cost is per expectation).
    rules.append(
        Rule(
            "schema",
            None,
            f"columns {', '.join(suite.required)} exist",
            lambda: gxe.ExpectTableColumnsToMatchSet(column_set=list(suite.required), exact_match=False),
            columns=suite.required,
        )
    )
    for col in suite.required:
        if col in present and col not in suite.nullable:
            rules.append(
                Rule("not_null", col, f"{col} is never null", lambda c=col: gxe.ExpectColumnValuesToNotBeNull(column=c))
            )
    for cols in suite.unique:
        if not set(cols) <= present:
            continue
        if len(cols) == 1:
            make = lambda c=cols[0]: gxe.ExpectColumnValuesToBeUnique(column=c)  # noqa: E731
        else:
            make = lambda cs=cols: gxe.ExpectCompoundColumnsToBeUnique(column_list=list(cs))  # noqa: E731
        rules.append(Rule("unique", ", ".join(cols), f"{' + '.join(cols)} is unique", make, columns=cols))
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


def run_gate(stage: str, manifest: pd.DataFrame, params: Params) -> GateResult:
    """Validate ``manifest`` against ``stage``'s suite; every expectation becomes one check."""
    import great_expectations as gx

    batch_definition = _batch_definition()  # also makes the context current for the suite
    columns = [str(c) for c in manifest.columns]
    rules = _rules_for(suite_for(stage, params), columns)
    suite = gx.ExpectationSuite(name=f"clipforge.{stage}")
    for index, rule in enumerate(rules):
        expectation = rule.make()
        # GX groups results by metric, not in suite order: the index maps them back.
        expectation.meta = {"clipforge_rule": index}
        suite.add_expectation(expectation)

    with _LOCK:
        batch = batch_definition.get_batch(batch_parameters={"dataframe": manifest})
        validation = batch.validate(suite, result_format="SUMMARY")

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
