"""Turn expectation suites into blocking Dagster asset checks, plus the per-source accounting check.

- ``suite_check(table)``: runs ``quality/suites/<table>.yaml`` on the table's current Parquet. Blocking:
  when it fails, assets downstream of the table are not materialized in that run; the check's
  metadata lists every failed expectation with sample values (visible in the UI).
- ``accounting_check(asset, source)``: every landed unit is either ingested or quarantined
  (landed = ingested + quarantined + merged), and the quarantine table really holds what the asset said.
"""

from collections.abc import Callable

import dagster as dg

from dagster_project.lake import Lake
from dagster_project.resources import LakeResource


def _table_frame(lake: Lake, table: str):
    """The table as pandas for GX; list/struct columns become strings (GX compares scalars)."""
    from quality.scaled import to_pandas

    return to_pandas(lake.read_table(table))


def run_table_suite(lake: Lake, table: str):
    """(outcome, how): the suite on every row, or, above ``scaled.LARGE_TABLE_ROWS`` rows, on the
    distinct values of the columns each expectation reads (same verdicts and row counts)."""
    import polars as pl

    from quality.scaled import LARGE_TABLE_ROWS, NeedsWholeTable, run_suite_scaled
    from quality.suites import run_suite

    scan = lake.scan_table(table)
    if scan.select(pl.len()).collect().item() > LARGE_TABLE_ROWS:
        try:
            return run_suite_scaled(table, scan), "distinct values of each expectation's columns"
        except NeedsWholeTable:
            pass
    return run_suite(table, _table_frame(lake, table)), "every row"


def suite_check(
    table: str, asset: str | dg.AssetKey | None = None, name: str = "gx_suite"
) -> dg.AssetChecksDefinition:
    """A blocking asset check running the table's GX suite (asset key defaults to the table name;
    a side table written by another table's asset gets its own check ``name`` on that asset)."""
    asset_key = dg.AssetKey(asset) if isinstance(asset, str) else (asset or dg.AssetKey(table))

    @dg.asset_check(
        asset=asset_key,
        name=name,
        blocking=True,
        description=f"Great Expectations suite quality/suites/{table}.yaml on lake/{table}/ (blocking).",
    )
    def _suite_check(
        context: dg.AssetCheckExecutionContext, lake: LakeResource
    ) -> dg.AssetCheckResult:
        from quality.suites import outcome_markdown

        home = lake.lake()
        if not home.has_table(table):
            return dg.AssetCheckResult(
                passed=False,
                metadata={"error": f"lake/{table}/ has no Parquet file: the asset wrote nothing"},
            )
        outcome, evaluated_on = run_table_suite(home, table)
        failed = {
            f"{o.expectation}({', '.join(f'{k}={v}' for k, v in o.kwargs.items())})": {
                "unexpected_count": o.unexpected_count,
                "sample_values": o.sample_values,
                "error": o.error,
            }
            for o in outcome.failed
        }
        if failed:
            context.log.error(f"{table}: {len(failed)} expectation(s) failed: {', '.join(failed)}")
        return dg.AssetCheckResult(
            passed=outcome.success,
            # nothing landed for this domain: a typed table with zero rows, checked all the same
            description=f"empty table: lake/{table}/ has 0 rows (nothing landed for it yet); "
            "the column expectations hold vacuously"
            if outcome.rows == 0
            else None,
            metadata={
                "rows": outcome.rows,
                "empty": outcome.rows == 0,
                "evaluated_on": evaluated_on,
                "expectations": len(outcome.outcomes),
                "failed": len(failed),
                "failed_expectations": dg.MetadataValue.json(failed),
                "report": dg.MetadataValue.md(outcome_markdown(outcome)),
            },
        )

    _suite_check.__name__ = f"{table}_gx_suite"
    return _suite_check


def _metadata_number(metadata: dict, key: str) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    return int(getattr(value, "value", value))


def accounting_check(
    asset: str,
    source: str | None = None,
    count_landed: Callable[[Lake], int] | None = None,
) -> dg.AssetChecksDefinition:
    """Blocking check: landed = ingested + quarantined (+ merged) for one ingest source.

    ``count_landed`` recounts the landed units from ``landing/`` independently of the asset; without
    it the asset's own ``landed`` metadata is used. ``quarantined`` is compared with the rows this
    source really has in the quarantine table.
    """
    source = source or asset

    @dg.asset_check(
        asset=dg.AssetKey(asset),
        name="accounting",
        blocking=True,
        description="Every landed unit is ingested or quarantined: nothing dropped silently.",
    )
    def _accounting(
        context: dg.AssetCheckExecutionContext, lake: LakeResource
    ) -> dg.AssetCheckResult:
        from dagster_project.quarantine import read_quarantine

        event = context.instance.get_latest_materialization_event(dg.AssetKey(asset))
        if event is None or event.asset_materialization is None:
            return dg.AssetCheckResult(
                passed=False, metadata={"error": f"{asset} was never materialized"}
            )
        metadata = dict(event.asset_materialization.metadata)
        home = lake.lake()
        counts = {
            k: _metadata_number(metadata, k) or 0
            for k in ("landed", "ingested", "quarantined", "merged")
        }
        landed = count_landed(home) if count_landed else counts["landed"]
        in_quarantine = read_quarantine(home, source).height
        balanced = landed == counts["ingested"] + counts["quarantined"] + counts["merged"]
        honest = in_quarantine == counts["quarantined"]
        return dg.AssetCheckResult(
            passed=balanced and honest,
            metadata={
                "landed": landed,
                "ingested": counts["ingested"],
                "quarantined": counts["quarantined"],
                "merged": counts["merged"],
                "quarantine_rows": in_quarantine,
                "rule": "landed == ingested + quarantined + merged; quarantine_rows == quarantined",
            },
        )

    _accounting.__name__ = f"{asset}_accounting"
    return _accounting
