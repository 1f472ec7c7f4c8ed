"""Expectation suites as readable YAML files (``quality/suites/<table>.yaml``) run with GX 1.x.

A suite file::

    table: imaging_series
    description: One row per DICOM series or volume file.
    expectations:
      - expect_column_values_to_not_be_null: {column: series_id}
      - expect_column_values_to_be_unique: {column: series_id}

Each entry is a Great Expectations 1.x expectation type (snake_case) and its keyword arguments.
GX is imported inside ``run_suite`` (its import takes ~4-5 s) with analytics off; no network,
no progress bars. Pure module (no Dagster import).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SUITES_DIR = Path(__file__).resolve().parent / "suites"
SAMPLE_SIZE = 5


@dataclass
class ExpectationOutcome:
    expectation: str
    kwargs: dict[str, Any]
    success: bool
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    sample_values: list[Any] = field(default_factory=list)
    observed_value: Any = None
    error: str | None = None


@dataclass
class SuiteOutcome:
    table: str
    rows: int
    outcomes: list[ExpectationOutcome]

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def failed(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]


def suite_path(table: str, suites_dir: Path = SUITES_DIR) -> Path:
    return suites_dir / f"{table}.yaml"


def load_suite(table: str, suites_dir: Path = SUITES_DIR) -> list[tuple[str, dict[str, Any]]]:
    """The (expectation type, kwargs) pairs of a table's suite file, validated for shape."""
    path = suite_path(table, suites_dir)
    spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if spec.get("table") != table:
        raise ValueError(f"{path}: key 'table' must be {table!r}, found {spec.get('table')!r}")
    entries = spec.get("expectations")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: key 'expectations' must be a non-empty list")
    pairs = []
    for index, entry in enumerate(entries, start=1):
        if not (isinstance(entry, dict) and len(entry) == 1):
            raise ValueError(f"{path}: expectation #{index} must be one mapping `type: {{kwargs}}`")
        ((name, kwargs),) = entry.items()
        if not name.startswith("expect_"):
            raise ValueError(f"{path}: expectation #{index} {name!r} is not a GX expectation type")
        pairs.append((name, dict(kwargs or {})))
    return pairs


def suite_tables(suites_dir: Path = SUITES_DIR) -> list[str]:
    return sorted(p.stem for p in suites_dir.glob("*.yaml"))


def _gx_class(name: str):
    import great_expectations as gx

    camel = "".join(part.capitalize() for part in name.split("_"))
    try:
        return getattr(gx.expectations, camel)
    except AttributeError as exc:
        raise ValueError(f"unknown Great Expectations expectation {name!r}") from exc


def _plain(value: Any) -> Any:
    """JSON-friendly sample values (NaN -> None, numpy scalars -> Python)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)


def run_suite(table: str, frame, suites_dir: Path = SUITES_DIR) -> SuiteOutcome:
    """Validate a pandas DataFrame against the table's suite with an ephemeral GX context."""
    pairs = load_suite(table, suites_dir)
    columns = set(frame.columns)
    outcomes: list[ExpectationOutcome] = []
    present = []
    for name, kwargs in pairs:
        column = kwargs.get("column")
        if column is not None and column not in columns:
            # GX reports a missing column as an exception deep in its result; say it plainly
            outcomes.append(
                ExpectationOutcome(name, kwargs, False, error=f"column {column!r} is missing")
            )
            continue
        present.append((name, kwargs))
    results = validate_frame(
        table,
        frame,
        present,
        {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_SIZE},
    )
    for res in results:
        info = res.result or {}
        outcomes.append(
            outcome_of(res, info.get("unexpected_count"), info.get("unexpected_percent"))
        )
    return SuiteOutcome(table=table, rows=len(frame), outcomes=outcomes)


def validate_frame(table: str, frame, pairs: list[tuple[str, dict]], result_format: dict) -> list:
    """GX's validation results of ``pairs`` (expectation type, kwargs) on a pandas frame, in
    order (an ephemeral context, analytics and progress bars off)."""
    if not pairs:
        return []
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import logging

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    # no tqdm bars in the Dagster logs
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas(f"radlake_{table}")
    batch_def = source.add_dataframe_asset(name=table).add_batch_definition_whole_dataframe("all")
    batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name=f"{table}_suite")
    for name, kwargs in pairs:
        suite.add_expectation(_gx_class(name)(**kwargs))
    return list(batch.validate(suite, result_format=result_format).results)


def outcome_of(res, unexpected_count, unexpected_percent) -> ExpectationOutcome:
    """An ``ExpectationOutcome`` from one GX result (counts given by the caller)."""
    config = res.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
    info = res.result or {}
    error = None
    if res.exception_info and res.exception_info.get("raised_exception"):
        error = str(res.exception_info.get("exception_message"))[:300]
    return ExpectationOutcome(
        expectation=config.type,
        kwargs=kwargs,
        success=bool(res.success),
        unexpected_count=unexpected_count,
        unexpected_percent=unexpected_percent,
        sample_values=[_plain(v) for v in (info.get("partial_unexpected_list") or [])][
            :SAMPLE_SIZE
        ],
        observed_value=_plain(info.get("observed_value")),
        error=error,
    )


def outcome_markdown(outcome: SuiteOutcome) -> str:
    """A markdown table of every expectation: what it checks, pass/fail, how many, sample values."""
    lines = [
        f"**{outcome.table}**: {len(outcome.outcomes) - len(outcome.failed)}/{len(outcome.outcomes)} expectations passed on {outcome.rows} rows",
        "",
        "| expectation | arguments | result | unexpected | sample values |",
        "|---|---|---|---|---|",
    ]
    for o in sorted(outcome.outcomes, key=lambda o: o.success):
        args = ", ".join(f"{k}={v}" for k, v in o.kwargs.items())
        status = "passed" if o.success else f"FAILED{': ' + o.error if o.error else ''}"
        unexpected = (
            ""
            if o.unexpected_count is None
            else f"{o.unexpected_count} ({(o.unexpected_percent or 0):.1f}%)"
        )
        samples = ", ".join(repr(v) for v in o.sample_values) or (
            "" if o.observed_value is None else f"observed {o.observed_value!r}"
        )
        lines.append(
            f"| {o.expectation} | {args} | {status} | {unexpected} | {samples} |".replace("\n", " ")
        )
    return "\n".join(lines)
