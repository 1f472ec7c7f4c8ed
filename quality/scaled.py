"""Running a table's GX suite on a large table without handing GX every row.

``run_suite`` gives GX the whole table as pandas: right for the tables of a study (thousands of
rows), wrong for a long radiomics table (10k cases x 1,300 features = 13M rows: ~130 s and ~13 GB
through pandas). ``run_suite_scaled`` gets the same verdicts and the same unexpected row counts
from far smaller frames, still evaluated by GX:

- **Row-wise expectations** (a value, or a pair of values, judged on its own: not null, regex,
  in set, between, value lengths, column A greater than B) are grouped by the columns they read;
  GX validates the *distinct* values of those columns, each with its number of rows. A row fails
  exactly when its value fails, so the verdict is the one GX would give on the whole table;
  unexpected rows = the summed row counts of the failing values (GX's
  ``unexpected_index_list``), and the percentage is taken over the rows GX would count (nulls
  left out, except for not-null).
- **Uniqueness** (``expect_column_values_to_be_unique``, ``expect_compound_columns_to_be_unique``)
  is not row-wise: polars finds the rows whose key occurs more than once (nulls compared equal,
  as pandas does) and GX validates those rows only (none: it passes). GX counts every row of a
  duplicated key as unexpected, so its count on those rows is its count on the table.

A row-wise expectation with a ``row_condition`` (pandas syntax) also reads the columns its
condition names: they join the distinct values, GX applies the condition to them, and the
percentage is taken over the rows the condition keeps. An expectation with ``mostly`` or any
other kind needs the whole table: ``NeedsWholeTable`` is raised and the caller uses
``run_suite``. ``tests/test_quality_scaled.py`` checks both paths give the same outcome on tables
with bad values, nulls and duplicates.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

import numpy as np
import polars as pl

from quality.suites import (
    SAMPLE_SIZE,
    ExpectationOutcome,
    SuiteOutcome,
    load_suite,
    outcome_of,
    validate_frame,
)

LARGE_TABLE_ROWS = 250_000  # above this, suite checks use run_suite_scaled
ROW_WISE = {
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_match_regex",
    "expect_column_values_to_not_match_regex",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_be_between",
    "expect_column_value_lengths_to_be_between",
    "expect_column_pair_values_a_to_be_greater_than_b",
}
UNIQUE = {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"}
_WEIGHT = "__radlake_rows"


class NeedsWholeTable(Exception):
    """The suite has an expectation that cannot be judged on distinct values."""


def columns_of(kwargs: dict[str, Any]) -> list[str]:
    found = [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
    return found + list(kwargs.get("column_list") or [])


def to_pandas(frame: pl.DataFrame):
    """pandas for GX; list/struct columns become strings (GX compares scalars)."""
    nested = [n for n, t in frame.schema.items() if isinstance(t, pl.List | pl.Struct | pl.Array)]
    if nested:
        frame = frame.with_columns(
            pl.col(c).map_elements(
                lambda v: None if v is None else str(list(v)), return_dtype=pl.String
            )
            for c in nested
        )
    return frame.to_pandas()


def run_suite_scaled(table: str, scan: pl.LazyFrame, suites_dir=None) -> SuiteOutcome:
    """The table's suite on a lazy frame (see the module doc); ``NeedsWholeTable`` if it has an
    expectation this cannot judge."""
    pairs = load_suite(table) if suites_dir is None else load_suite(table, suites_dir)
    schema = scan.collect_schema()
    total = scan.select(pl.len()).collect().item()
    outcomes: list[ExpectationOutcome | None] = [None] * len(pairs)
    by_columns: dict[tuple[str, ...], list[int]] = defaultdict(list)
    unique: list[int] = []
    for index, (name, kwargs) in enumerate(pairs):
        conditional = "row_condition" in kwargs and (
            name in UNIQUE or kwargs.get("condition_parser") != "pandas"
        )
        if "mostly" in kwargs or conditional or (name not in ROW_WISE and name not in UNIQUE):
            raise NeedsWholeTable(f"{name}({kwargs}) needs every row")
        columns = columns_of(kwargs) + _condition_columns(kwargs, schema)
        absent = [c for c in columns if c not in schema]
        if absent:
            outcomes[index] = ExpectationOutcome(
                name, kwargs, False, error=f"column {absent[0]!r} is missing"
            )
        elif name in UNIQUE:
            unique.append(index)
        else:
            by_columns[tuple(columns)].append(index)

    for columns, indexes in by_columns.items():
        distinct = (
            scan.group_by(list(columns)).agg(pl.len().alias(_WEIGHT)).collect(engine="streaming")
        )
        weights = distinct.get_column(_WEIGHT).to_numpy()
        frame = to_pandas(distinct.drop(_WEIGHT))
        results = validate_frame(
            table,
            frame,
            [pairs[i] for i in indexes],
            {"result_format": "COMPLETE", "partial_unexpected_count": SAMPLE_SIZE},
        )
        for index, res in zip(indexes, results, strict=True):
            name, kwargs = pairs[index]
            failing = (res.result or {}).get("unexpected_index_list") or []
            rows = int(weights[np.asarray(failing, dtype=np.int64)].sum()) if failing else 0
            ignored = distinct.select(_ignored(kwargs, columns_of(kwargs)).alias("x"))
            kept = _kept(kwargs, frame)  # rows the row_condition keeps (all without one)
            ignored_rows = int(weights[kept & ignored.get_column("x").to_numpy()].sum())
            considered = int(weights[kept].sum())
            counted = considered if name.endswith("_not_be_null") else considered - ignored_rows
            percent = 100.0 * rows / counted if counted else 0.0
            outcome = outcome_of(res, rows, percent)
            outcomes[index] = _shortened(outcome)

    for index in unique:
        name, kwargs = pairs[index]
        keys = columns_of(kwargs)
        # keys seen twice, found by a 64-bit hash of the key (a few hundred MB at 13M rows, not
        # a hash table of the string keys), then confirmed on the real key values
        hashed = pl.struct(keys).hash(seed=0).alias(_WEIGHT)
        suspects = (
            scan.select(hashed).group_by(_WEIGHT).agg(pl.len().alias("n")).filter(pl.col("n") > 1)
        )
        candidates = (
            scan.select(*keys, hashed)
            .join(suspects.select(_WEIGHT), on=_WEIGHT, how="semi")
            .select(keys)
            .collect(engine="streaming")
        )
        repeated = candidates.group_by(keys).agg(pl.len().alias("n")).filter(pl.col("n") > 1)
        rows_of_repeated = candidates.join(
            repeated.select(keys), on=keys, how="semi", nulls_equal=True
        )
        frame = to_pandas(rows_of_repeated)
        (res,) = validate_frame(
            table,
            frame,
            [pairs[index]],
            {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_SIZE},
        )
        info = res.result or {}
        count = info.get("unexpected_count") or 0
        ignored_rows = scan.filter(_ignored(kwargs, keys)).select(pl.len()).collect().item()
        counted = total - ignored_rows
        outcomes[index] = outcome_of(res, count, 100.0 * count / counted if counted else 0.0)

    return SuiteOutcome(table=table, rows=total, outcomes=[o for o in outcomes if o is not None])


def _ignored(kwargs: dict[str, Any], columns: list[str]) -> pl.Expr:
    """Rows GX leaves out of an expectation's percentage (its ``ignore_row_if``; default: all of
    the columns missing)."""
    rule = kwargs.get("ignore_row_if", "all_values_are_missing")
    nulls = [pl.col(c).is_null() for c in columns]
    if rule in ("either_value_is_missing", "any_value_is_missing"):
        return pl.any_horizontal(nulls)
    if rule == "never":
        return pl.lit(False)
    return pl.all_horizontal(nulls)


def _condition_columns(kwargs: dict[str, Any], schema) -> list[str]:
    """The table columns a ``row_condition`` names (beyond the expectation's own columns)."""
    condition = kwargs.get("row_condition")
    if not condition:
        return []
    own = set(columns_of(kwargs))
    return [
        c
        for c in schema
        if c not in own and re.search(rf"(?<![\w.]){re.escape(c)}(?!\w)", condition)
    ]


def _kept(kwargs: dict[str, Any], frame) -> np.ndarray:
    """Which rows of the (pandas) distinct frame the expectation's ``row_condition`` keeps."""
    condition = kwargs.get("row_condition")
    if not condition:
        return np.ones(len(frame), dtype=bool)
    return frame.index.isin(frame.query(condition).index)


def _shortened(outcome: ExpectationOutcome) -> ExpectationOutcome:
    outcome.sample_values = outcome.sample_values[:SAMPLE_SIZE]
    return outcome
