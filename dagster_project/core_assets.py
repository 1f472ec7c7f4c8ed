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


def build_core_assets(ingest: Sequence[dg.AssetKey], table_schemas: dict | None = None) -> list:
    """The quarantine asset and the catalog asset, both right after every ingest.

    Neither waits on a cohort, a study or any other derived asset: whatever those fail, the
    rejects are visible and ``radlake sql`` answers. The catalog's views are globs over
    ``lake/<table>/``, so what a study writes after the catalog was built shows up in its views
    at once; a table no study has written yet (``table_schemas``) gets an empty typed part first.
    """

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
        from dagster_project.tables import EMPTY_PART

        home = lake.lake()
        # an empty, typed part keeps the view (and its suite) defined when nothing was rejected
        home.write_part(QUARANTINE_TABLE, EMPTY_PART, pl.DataFrame(schema=QUARANTINE_SCHEMA))
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
        deps=[*ingest, quarantine.key],
        group_name="lake",
        kinds={"duckdb"},
        description="catalog.duckdb: a view per lake table plus every file of sql/ and "
        "LAKE_HOME/sql/; swapped in atomically. Built right after ingest: never waits on a "
        "cohort or a study.",
    )
    def catalog(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
        from dagster_project.catalog import CATALOG_STORAGE_VERSION, build_catalog
        from dagster_project.tables import ensure_tables

        home = lake.lake()
        created = ensure_tables(home, table_schemas or {})
        if created:
            context.log.info(f"catalog: empty typed tables until written: {', '.join(created)}")
        report = build_catalog(home)
        for name, error in report.failed.items():
            context.log.warning(f"catalog: view {name} not created: {error}")
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(report.path)),
                "table_views": dg.MetadataValue.json(report.table_views),
                "sql_views": dg.MetadataValue.json(report.sql_views),
                "failed_views": dg.MetadataValue.json(report.failed),
                "n_views": len(report.table_views) + len(report.sql_views),
                "duckdb_storage_version": CATALOG_STORAGE_VERSION,  # what DuckDB 1.x clients open
            }
        )

    @dg.asset_check(
        asset=catalog, name="all_views_created", description="Every sql/ file became a view."
    )
    def catalog_views(lake: LakeResource) -> dg.AssetCheckResult:
        from dagster_project.catalog import open_catalog, sql_files, sql_roots

        expected = set(sql_files(sql_roots(lake.lake()))) | set(lake.lake().tables())
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
