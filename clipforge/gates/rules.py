"""What a quality suite says about a manifest, as plain data.

A :class:`Suite` names the required columns (schema), the nullable ones, the unique keys and
further :class:`Rule` s; ``clipforge.gates.expectations`` adds the checks every suite has (at
least one row, the schema, no nulls in required columns, uniqueness) and runs them all. A rule
carries the Great Expectations expectation it becomes by name, with its arguments, and the
statement a person reads when it fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from clipforge.files import SHA256_HEX

# Upper bound that makes "between" reject +-inf while accepting any real loss or norm.
FINITE_BOUND = 1e30
SHA256 = SHA256_HEX


@dataclass(frozen=True)
class Rule:
    """One check: a GX expectation (class name and arguments) plus what it means in words."""

    kind: str  # row_count | schema | not_null | unique | values | lengths | single_value
    column: str | None
    # Human statement of the rule, e.g. "width > 0"; used in reasons.
    statement: str
    expectation: str  # a class of great_expectations.expectations
    arguments: dict[str, Any] = field(default_factory=dict)
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
        "ExpectColumnValuesToBeBetween",
        {"column": column, "min_value": min_value, "max_value": max_value, "strict_min": strict_min},
    )


def positive(column: str) -> Rule:
    return between(column, 0, None, strict_min=True)


def finite(column: str) -> Rule:
    return between(column, -FINITE_BOUND, FINITE_BOUND, statement=f"{column} is finite")


def in_set(column: str, values: Sequence[Any], statement: str | None = None) -> Rule:
    shown = ", ".join(repr(v) for v in values)
    return Rule(
        "values",
        column,
        statement or f"{column} in {{{shown}}}",
        "ExpectColumnValuesToBeInSet",
        {"column": column, "value_set": list(values)},
    )


def all_true(column: str) -> Rule:
    return in_set(column, [True], statement=f"{column} is True on every row")


def regex(column: str, pattern: str, statement: str) -> Rule:
    return Rule("values", column, statement, "ExpectColumnValuesToMatchRegex", {"column": column, "regex": pattern})


def non_empty_text(column: str, mostly: float = 1.0) -> Rule:
    return Rule(
        "lengths",
        column,
        f"{column} is non-empty" + (f" for at least {mostly:.0%} of rows" if mostly < 1 else ""),
        "ExpectColumnValueLengthsToBeBetween",
        {"column": column, "min_value": 1, "mostly": mostly},
        mostly=mostly,
    )


def single_value(column: str) -> Rule:
    return Rule(
        "single_value",
        column,
        f"{column} is the same on every row",
        "ExpectColumnUniqueValueCountToBeBetween",
        {"column": column, "min_value": 0, "max_value": 1},
    )
