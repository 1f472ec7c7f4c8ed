"""Core assets: the quarantine table (every ingest's rejects) and the DuckDB catalog (the sink)."""

from collections.abc import Sequence

import dagster as dg

from dagster_project.resources import LakeResource
from dagster_project.sql_assets import markdown_table
from quality.checks import suite_check

INGEST_TAG = "radlake/layer"
READS_METADATA = "radlake/reads"  # the folders under LAKE_HOME an ingest asset reads


def reads(*folders: str) -> dict[str, dg.MetadataValue]:
    """An ingest asset's metadata naming the folders (relative to LAKE_HOME) it reads.

    The landing sensor watches exactly these folders: a change in one materializes the assets that
    declare it (whole multi-assets) and everything downstream of them but the studies.
    """
    return {READS_METADATA: dg.MetadataValue.json(list(folders))}


def build_core_assets(upstream: Sequence[dg.AssetKey], ingest: Sequence[dg.AssetKey]) -> list:
    """The quarantine asset (after every ingest) and the catalog asset (after everything)."""

    @dg.asset(
        name="quarantine",
        deps=list(ingest),
        group_name="lake",
        kinds={"parquet"},
        tags={INGEST_TAG: "core"},
        description="Every rejected file, row or record with its reason (each ingest owns one part).",
    )
    def quarantine(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        import polars as pl

        from dagster_project.quarantine import QUARANTINE_SCHEMA, QUARANTINE_TABLE, read_quarantine

        home = lake.lake()
        # an empty, typed part keeps the view (and its suite) defined when nothing was rejected
        home.write_part(QUARANTINE_TABLE, "empty-schema", pl.DataFrame(schema=QUARANTINE_SCHEMA))
        frame = read_quarantine(home)
        by_rule = (
            frame.group_by("source", "rule").len().sort("source", "rule")
            if frame.height
            else pl.DataFrame(schema={"source": pl.String, "rule": pl.String, "len": pl.UInt32})
        )
        for row in by_rule.iter_rows(named=True):
            context.log.warning(
                f"quarantine: {row['source']} rejected {row['len']} ({row['rule']})"
            )
        return dg.MaterializeResult(
            metadata={
                "rows": frame.height,
                "by_source_and_rule": dg.MetadataValue.md(markdown_table(by_rule, rows=100)),
                "path": dg.MetadataValue.path(str(home.table_dir(QUARANTINE_TABLE))),
            }
        )

    @dg.asset(
        name="catalog",
        deps=[*upstream, quarantine.key],
        group_name="lake",
        kinds={"duckdb"},
        description="catalog.duckdb: a view per lake table plus every sql/ file; swapped in atomically.",
    )
    def catalog(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        from dagster_project.catalog import build_catalog

        report = build_catalog(lake.lake())
        for name, error in report.failed.items():
            context.log.warning(f"catalog: view {name} not created: {error}")
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(report.path)),
                "table_views": dg.MetadataValue.json(report.table_views),
                "sql_views": dg.MetadataValue.json(report.sql_views),
                "failed_views": dg.MetadataValue.json(report.failed),
                "n_views": len(report.table_views) + len(report.sql_views),
            }
        )

    @dg.asset_check(
        asset=catalog, name="all_views_created", description="Every sql/ file became a view."
    )
    def catalog_views(lake: LakeResource) -> dg.AssetCheckResult:
        from dagster_project.catalog import open_catalog, sql_files

        expected = set(sql_files()) | set(lake.lake().tables())
        with open_catalog(lake.lake()) as con:
            present = {
                row[0]
                for row in con.execute(
                    "select view_name from duckdb_views() where not internal"
                ).fetchall()
            }
        missing = sorted(expected - present)
        return dg.AssetCheckResult(
            passed=not missing,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"missing_views": dg.MetadataValue.json(missing), "views": len(present)},
        )

    return [quarantine, catalog, catalog_views, suite_check("quarantine")]
