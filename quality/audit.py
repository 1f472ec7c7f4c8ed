"""The lake's auditor: what write-audit-publish runs on a staged table version before it goes live.

For every staged table that has a suite (``quality/suites/<table>.yaml``):

- the **GX expectations** (``expectations:``), on every row or, above 250,000 rows, on distinct
  values (``quality.scaled``; the same verdicts);
- the **value rules** (``values:``, optional), judged with polars on the lake *as it would be*
  after the publish, so related tables staged together are checked against each other:

  ```yaml
  values:
    - finite: {column: value}                                    # no NaN / +-inf (blocking)
    - references: {column: series_id, table: imaging_series}     # every value exists there (blocking)
    - coverage: {column: patient_key, table: cases}              # both ways, reported (warning)
    - row_count_drop: {max_drop: 0.5}                            # vs the live version (warning)
  ```

  ``references`` and ``coverage`` take ``key:`` when the other table names the column
  differently, and ``severity: warn`` / ``error`` overrides the default. A referenced table that
  is not in the lake yet is reported as skipped, not failed.

A result per table: ``passed`` (no blocking failure), ``failed`` (one line per failed expectation
or rule, naming it), ``warnings``, ``suite`` (the expectations' outcomes), ``rules``,
``suite_sha256`` (so the Dagster check can tell the recorded audit is the current suite's).
Pure module (no Dagster import); GX is imported only when a suite runs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import polars as pl

from dagster_project.lake import Lake
from quality.suites import SUITES_DIR, suite_path

WARN, ERROR = "warn", "error"
DEFAULT_SEVERITY = {"finite": ERROR, "references": ERROR, "coverage": WARN, "row_count_drop": WARN}
DEFAULT_MAX_DROP = 0.5


def suite_sha256(table: str) -> str | None:
    path = suite_path(table)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def value_rules(table: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``values:`` entries of a table's suite, validated for shape."""
    import yaml

    path = suite_path(table)
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    out = []
    for index, entry in enumerate(spec.get("values") or [], start=1):
        if not (isinstance(entry, dict) and len(entry) == 1):
            raise ValueError(f"{path}: values #{index} must be one mapping `rule: {{arguments}}`")
        ((rule, kwargs),) = entry.items()
        if rule not in DEFAULT_SEVERITY:
            raise ValueError(
                f"{path}: values #{index} {rule!r} is not one of {sorted(DEFAULT_SEVERITY)}"
            )
        out.append((rule, dict(kwargs or {})))
    return out


def audit_tables(view: Lake, tables: list[str]) -> dict[str, dict]:
    """The auditor ``Lake`` transactions call: every staged table with a suite, judged on ``view``."""
    return {t: audit_table(view, t) for t in tables if suite_path(t).exists()}


def run_table_suite(lake: Lake, table: str):
    """(outcome, how): the suite on every row, or, above ``scaled.LARGE_TABLE_ROWS`` rows, on the
    distinct values of the columns each expectation reads (same verdicts and row counts)."""
    from quality.scaled import LARGE_TABLE_ROWS, NeedsWholeTable, run_suite_scaled, to_pandas
    from quality.suites import run_suite

    scan = lake.scan_table(table)
    if scan.select(pl.len()).collect().item() > LARGE_TABLE_ROWS:
        try:
            return run_suite_scaled(table, scan), "distinct values of each expectation's columns"
        except NeedsWholeTable:
            pass
    return run_suite(table, to_pandas(lake.read_table(table))), "every row"


def audit_table(view: Lake, table: str) -> dict[str, Any]:
    failed: list[str] = []
    warnings: list[str] = []
    suite: dict[str, Any] = {}
    if view.has_table(table):
        outcome, evaluated_on = run_table_suite(view, table)
        suite = {
            "rows": outcome.rows,
            "evaluated_on": evaluated_on,
            "expectations": len(outcome.outcomes),
            "failed": {
                _expectation_name(o): {
                    "unexpected_count": o.unexpected_count,
                    "sample_values": o.sample_values,
                    "error": o.error,
                }
                for o in outcome.failed
            },
        }
        failed += [f"{name} ({_count(info)})" for name, info in suite["failed"].items()]
    rules = []
    for rule, kwargs in value_rules(table):
        result = RULES[rule](view, table, kwargs)
        severity = kwargs.get("severity", DEFAULT_SEVERITY[rule])
        result.update(rule=rule, arguments=kwargs, severity=severity)
        rules.append(result)
        if not result["passed"]:
            line = f"{rule}({_arguments(kwargs)}): {result['message']}"
            (failed if severity == ERROR else warnings).append(line)
    return {
        "passed": not failed,
        "failed": failed,
        "warnings": warnings,
        "suite": suite,
        "rules": rules,
        "suite_sha256": suite_sha256(table),
    }


def _expectation_name(o) -> str:
    return f"{o.expectation}({_arguments(o.kwargs)})"


def _arguments(kwargs: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items() if k != "severity")


def _count(info: dict) -> str:
    if info.get("error"):
        return str(info["error"])
    samples = ", ".join(repr(v) for v in info.get("sample_values") or [])
    return f"{info.get('unexpected_count')} unexpected" + (f", e.g. {samples}" if samples else "")


# --- value rules -------------------------------------------------------------------------------
def _scan(view: Lake, table: str) -> pl.LazyFrame | None:
    return view.scan_table(table) if view.has_table(table) else None


def _finite(view: Lake, table: str, kwargs: dict) -> dict:
    column = kwargs["column"]
    scan = _scan(view, table)
    if scan is None or column not in scan.collect_schema():
        return {"passed": False, "message": f"column {column!r} is missing"}
    bad = (
        scan.select(pl.col(column).cast(pl.Float64))
        .filter(pl.col(column).is_nan() | pl.col(column).is_infinite())
        .select(pl.len())
        .collect()
        .item()
    )
    return {
        "passed": bad == 0,
        "unexpected_count": bad,
        "message": f"{bad} value(s) are NaN or infinite" if bad else "all values finite",
    }


def _keys(view: Lake, table: str, column: str) -> pl.LazyFrame | None:
    scan = _scan(view, table)
    if scan is None or column not in scan.collect_schema():
        return None
    return scan.select(pl.col(column).cast(pl.String)).drop_nulls().unique()


def _references(view: Lake, table: str, kwargs: dict) -> dict:
    column, other = kwargs["column"], kwargs["table"]
    key = kwargs.get("key", column)
    mine, theirs = _keys(view, table, column), _keys(view, other, key)
    if mine is None:
        return {"passed": False, "message": f"column {column!r} is missing"}
    if theirs is None:
        return {"passed": True, "skipped": True, "message": f"{other}.{key} not in the lake yet"}
    missing = mine.join(theirs.rename({key: column}), on=column, how="anti").collect()
    n = missing.height
    return {
        "passed": n == 0,
        "unexpected_count": n,
        "sample_values": missing.get_column(column).head(5).to_list(),
        "message": f"{n} {column} value(s) not found in {other}.{key}" if n else "all found",
    }


def _coverage(view: Lake, table: str, kwargs: dict) -> dict:
    column, other = kwargs["column"], kwargs["table"]
    key = kwargs.get("key", column)
    mine, theirs = _keys(view, table, column), _keys(view, other, key)
    if mine is None or theirs is None:
        return {"passed": True, "skipped": True, "message": f"{table} or {other} not in the lake"}
    theirs = theirs.rename({key: column})
    only_here = mine.join(theirs, on=column, how="anti").select(pl.len()).collect().item()
    only_there = theirs.join(mine, on=column, how="anti").select(pl.len()).collect().item()
    both = mine.join(theirs, on=column, how="semi").select(pl.len()).collect().item()
    return {
        "passed": only_here == 0 and only_there == 0,
        "in_both": both,
        f"only_in_{table}": only_here,
        f"only_in_{other}": only_there,
        "message": f"{both} {column} in both, {only_here} only in {table}, "
        f"{only_there} only in {other}",
    }


def _row_count_drop(view: Lake, table: str, kwargs: dict) -> dict:
    max_drop = float(kwargs.get("max_drop", DEFAULT_MAX_DROP))
    previous = (view.manifest(table) or {}).get("rows")
    scan = _scan(view, table)
    rows = scan.select(pl.len()).collect().item() if scan is not None else 0
    if not previous:
        return {"passed": True, "rows": rows, "previous_rows": previous, "message": "first version"}
    drop = (previous - rows) / previous
    return {
        "passed": drop <= max_drop,
        "rows": rows,
        "previous_rows": previous,
        "drop": round(drop, 4),
        "message": f"{previous} -> {rows} rows ({drop:.0%} drop; threshold {max_drop:.0%})",
    }


RULES = {
    "finite": _finite,
    "references": _references,
    "coverage": _coverage,
    "row_count_drop": _row_count_drop,
}
__all__ = ["SUITES_DIR", "audit_table", "audit_tables", "value_rules"]
